import torch, glob
from safetensors import safe_open
def get(d, k):
    for f in glob.glob(d + "/*.safetensors"):
        with safe_open(f, "pt") as s:
            if k in s.keys(): return s.get_tensor(k).float()
k = "model.layers.3.self_attn.k_proj.weight"
B = get("results/bench-049b/base", k)
a, b = get("results/cmp049/mk_ties", k), get("results/cmp049/em_ties", k)
diff = (a - b).abs() > (torch.maximum(a.abs(), b.abs()) * 2**-7 + 1e-6)
n = B.numel(); kk = int(0.5 * n)
on_tie = torch.zeros_like(diff)
for ft in ["ft1", "ft2"]:
    d = (get("results/bench-049b/" + ft, k) - B).abs()
    t = torch.kthvalue(d.view(-1), n - kk + 1).values  # smallest kept magnitude
    print(ft, "threshold", float(t), "entries equal to it", int((d == t).sum()))
    on_tie |= (d == t)
print("differing", int(diff.sum()), "of which at a threshold tie", int((diff & on_tie).sum()))
