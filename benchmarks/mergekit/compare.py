import sys, json, glob, os, torch
from safetensors import safe_open
def load(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with safe_open(f, "pt") as s:
            for k in s.keys(): out[k] = s.get_tensor(k)
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
base = load(sys.argv[3]) if len(sys.argv) > 3 else None
assert set(a) == set(b), (set(a) ^ set(b))
n = worst = 0; over = 0; tot_abs = 0.0; tot_dabs = 0.0; mism_ulp = 0
for k in sorted(a):
    x, y = a[k].float(), b[k].float()
    assert x.shape == y.shape, k
    d = (x - y).abs()
    # bf16 tolerance: one bf16 ulp of the larger magnitude (2^-7 relative) plus 1e-6
    tol = torch.maximum(x.abs(), y.abs()) * 2**-7 + 1e-6
    over += int((d > tol).sum()); n += x.numel(); worst = max(worst, float(d.max()))
    if base is not None:
        bb = base[k].float(); tot_abs += float((x - bb).abs().sum()); tot_dabs += float((y - bb).abs().sum())
print(json.dumps({"tensors": len(a), "elements": n, "max_abs_diff": worst,
  "elements_beyond_1_bf16_ulp": over, "fraction_beyond": over / n,
  "mean_abs_task_vector_a": tot_abs / n if base else None, "mean_abs_task_vector_b": tot_dabs / n if base else None}))
