//! Choosing the device merges run on.

use burn::tensor::{Device, FloatDType};
use std::fmt;
use std::str::FromStr;

/// Where merge arithmetic runs: `cpu` (burn's flex backend), `wgpu` (any GPU wgpu finds, or
/// lavapipe on a machine without one), or `auto` (wgpu when an adapter answers, else cpu).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Wgpu,
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!("unknown device '{other}' (use cpu, wgpu or auto)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Wgpu => "wgpu",
            DeviceChoice::Auto => "auto",
        })
    }
}

impl DeviceChoice {
    /// The burn device for this choice. `wgpu` fails with a clear message when the binary was
    /// built without the `wgpu` feature or no adapter exists.
    pub fn device(self) -> Result<Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            DeviceChoice::Wgpu => wgpu_device().ok_or_else(|| {
                if cfg!(feature = "wgpu") {
                    "no wgpu adapter found (install a GPU driver, or mesa-vulkan-drivers for the CPU fallback lavapipe), or use --device cpu".to_string()
                } else {
                    "this evomerge was built without wgpu support; rebuild with `--features wgpu` or use --device cpu".to_string()
                }
            }),
            DeviceChoice::Auto => Ok(wgpu_device().unwrap_or_else(Device::flex)),
        }
    }
}

/// The precision in-process evaluators compute in (`eval_dtype` of an experiment): `auto`
/// (the sources' storage dtype where the device computes in it: float16 sources on a GPU;
/// float32 on the CPU, and for bfloat16 sources on wgpu, whose shading language has no
/// bfloat16), or `float32`, `float16`, `bfloat16` as asked. Norm statistics, softmax inputs
/// and the logits stay f32 in every case (`Llama::to_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalDtype {
    #[default]
    Auto,
    #[serde(alias = "f32", alias = "fp32")]
    Float32,
    #[serde(alias = "f16", alias = "fp16", alias = "half")]
    Float16,
    #[serde(alias = "bf16")]
    Bfloat16,
}

impl FromStr for EvalDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EvalDtype::Auto),
            "float32" | "f32" | "fp32" => Ok(EvalDtype::Float32),
            "float16" | "f16" | "fp16" | "half" => Ok(EvalDtype::Float16),
            "bfloat16" | "bf16" => Ok(EvalDtype::Bfloat16),
            other => Err(format!(
                "unknown eval_dtype '{other}' (use auto, float32, float16 or bfloat16)"
            )),
        }
    }
}

impl fmt::Display for EvalDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvalDtype::Auto => "auto",
            EvalDtype::Float32 => "float32",
            EvalDtype::Float16 => "float16",
            EvalDtype::Bfloat16 => "bfloat16",
        })
    }
}

impl EvalDtype {
    /// The dtype models are cast to on `device` for sources stored in `storage` (`None`:
    /// keep f32). An explicit reduced precision the device cannot compute in is an error
    /// that says what to use instead.
    pub fn resolve(
        self,
        storage: FloatDType,
        device: &Device,
    ) -> Result<Option<FloatDType>, String> {
        match self {
            EvalDtype::Float32 => Ok(None),
            EvalDtype::Auto => Ok((is_gpu(device)
                && storage == FloatDType::F16
                && computes_in(device, FloatDType::F16))
            .then_some(FloatDType::F16)),
            EvalDtype::Float16 | EvalDtype::Bfloat16 => {
                let dtype = if self == EvalDtype::Float16 {
                    FloatDType::F16
                } else {
                    FloatDType::BF16
                };
                if is_gpu(device) && dtype == FloatDType::BF16 {
                    return Err("eval_dtype = \"bfloat16\": wgpu has no bfloat16 (WGSL has no such type); use \"float16\" (the range of activations is smaller: check the scores against \"float32\" once) or \"float32\"".into());
                }
                if computes_in(device, dtype) {
                    Ok(Some(dtype))
                } else {
                    Err(format!(
                        "eval_dtype = \"{self}\": the device ({device:?}) does not compute in it (the wgpu adapter lacks SHADER_F16?); use \"float32\""
                    ))
                }
            }
        }
    }
}

/// Whether `device` runs a half-precision matmul (burn panics on an adapter without it).
fn computes_in(device: &Device, dtype: FloatDType) -> bool {
    let d = device.clone();
    quietly(move || {
        let a = burn::tensor::Tensor::<2>::from_floats([[1.0f32, 2.0], [3.0, 4.0]], &d).cast(dtype);
        let p = a.clone().matmul(a).cast(FloatDType::F32);
        crate::values_of(p) == vec![7.0, 10.0, 15.0, 22.0]
    })
}

/// `f()`, or false where it panics (burn panics where a device cannot do what is asked),
/// without printing the panic.
fn quietly(f: impl FnOnce() -> bool + std::panic::UnwindSafe) -> bool {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(f).unwrap_or(false);
    std::panic::set_hook(prev);
    ok
}

/// Whether a wgpu adapter answers (always false without the `wgpu` feature).
pub fn wgpu_available() -> bool {
    wgpu_device().is_some()
}

/// Whether `device` is a GPU backend's (wgpu), not the CPU's flex backend.
pub fn is_gpu(device: &Device) -> bool {
    !device.is_autodiff() && *device != Device::flex()
}

/// The wgpu device an `[execution] devices` entry stands for, so an in-process evaluator
/// (and the candidate's merge) runs on the GPU the candidate holds: `wgpu:N` is the N-th
/// adapter wgpu lists (of any kind: lavapipe, the CPU fallback, is one), `cuda:N`, `gpu:N`,
/// `rocm:N`, `hip:N` and a bare `N` the N-th discrete GPU (wgpu lists them in the order the
/// driver does, which is the PCI bus order of `CUDA_DEVICE_ORDER=PCI_BUS_ID`). Each device is
/// opened once here, so a name that stands for no adapter is an error before a search starts.
pub fn wgpu_device_for(kind: &str, index: usize) -> Result<Device, String> {
    if !cfg!(feature = "wgpu") {
        return Err(format!(
            "device {kind}:{index}: this evomerge was built without wgpu support, so in-process evaluators cannot use it; rebuild with `--features wgpu`, or set device = \"cpu\" (command evaluators still get CUDA_VISIBLE_DEVICES)"
        ));
    }
    placed_device(kind, index)
}

#[cfg(feature = "wgpu")]
fn placed_device(kind: &str, index: usize) -> Result<Device, String> {
    use burn::tensor::{DeviceKind, DeviceType};
    let listed = Device::enumerate(DeviceType::Wgpu);
    let device = match kind {
        "wgpu" => listed.get(index).cloned().ok_or_else(|| {
            format!(
                "device wgpu:{index}: wgpu lists {} adapter(s) on this machine ({}); wgpu:N counts them from 0",
                listed.len(),
                listed
                    .iter()
                    .map(|d| format!("{d:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
        _ => {
            let d = Device::wgpu(DeviceKind::DiscreteGpu(index));
            if !listed.contains(&d) {
                let gpus = (0..).take_while(|&i| listed.contains(&Device::wgpu(DeviceKind::DiscreteGpu(i)))).count();
                return Err(format!(
                    "device {kind}:{index}: wgpu finds {gpus} discrete GPU(s) on this machine (of {} adapter(s)); name the GPUs that exist, or use wgpu:N for the N-th adapter of any kind",
                    listed.len()
                ));
            }
            d
        }
    };
    if probe(&device) {
        Ok(device)
    } else {
        Err(format!(
            "device {kind}:{index} ({device:?}) is listed by wgpu but does not run a kernel; check its driver"
        ))
    }
}

#[cfg(not(feature = "wgpu"))]
fn placed_device(kind: &str, index: usize) -> Result<Device, String> {
    Err(format!("device {kind}:{index}: built without wgpu"))
}

/// Whether `device` runs a kernel: burn initialises an adapter lazily and panics when it
/// cannot, so the first use is caught here.
#[cfg(feature = "wgpu")]
fn probe(device: &Device) -> bool {
    let d = device.clone();
    quietly(move || {
        let t = burn::tensor::Tensor::<1>::from_floats([1.0f32, 2.0], &d);
        crate::scalar(t.sum()) == 3.0
    })
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<Device> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<bool> = OnceLock::new();
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let ok = *PROBE.get_or_init(|| probe(&device));
    ok.then_some(device)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Option<Device> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[execution] devices` entries resolve to wgpu adapters that run kernels, and a name
    /// that stands for no adapter says what exists (lavapipe on machines without a GPU;
    /// skipped without an adapter unless CI=true).
    #[test]
    fn held_devices_resolve_to_adapters_or_say_what_exists() {
        if !wgpu_available() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true") || !cfg!(feature = "wgpu"),
                "CI=true but no wgpu adapter"
            );
            let e = wgpu_device_for("cuda", 0).unwrap_err();
            assert!(e.contains("cuda:0"), "{e}");
            return;
        }
        let first = wgpu_device_for("wgpu", 0).unwrap();
        assert!(is_gpu(&first));
        assert!(!is_gpu(&Device::flex()));
        let t = burn::tensor::Tensor::<1>::from_floats([1.5f32, 2.0], &first);
        assert_eq!(crate::scalar(t.sum()), 3.5);
        let e = wgpu_device_for("wgpu", 64).unwrap_err();
        assert!(e.contains("wgpu:64") && e.contains("adapter"), "{e}");
        let e = wgpu_device_for("cuda", 64).unwrap_err();
        assert!(e.contains("cuda:64") && e.contains("discrete GPU"), "{e}");
        // lavapipe has SHADER_F16: float16 sources are evaluated in float16 there.
        assert_eq!(
            EvalDtype::Auto.resolve(FloatDType::F16, &first),
            Ok(Some(FloatDType::F16))
        );
        assert_eq!(EvalDtype::Auto.resolve(FloatDType::BF16, &first), Ok(None));
        let e = EvalDtype::Bfloat16
            .resolve(FloatDType::BF16, &first)
            .unwrap_err();
        assert!(e.contains("float16"), "{e}");
    }

    /// On the CPU `auto` is f32 whatever the sources are; a reduced precision asked for is
    /// used (flex computes in both).
    #[test]
    fn eval_dtype_on_the_cpu() {
        let cpu = Device::flex();
        for storage in [FloatDType::F16, FloatDType::BF16, FloatDType::F32] {
            assert_eq!(EvalDtype::Auto.resolve(storage, &cpu), Ok(None));
            assert_eq!(EvalDtype::Float32.resolve(storage, &cpu), Ok(None));
        }
        assert_eq!(
            EvalDtype::Bfloat16.resolve(FloatDType::F32, &cpu),
            Ok(Some(FloatDType::BF16))
        );
        assert_eq!(
            EvalDtype::Float16.resolve(FloatDType::F32, &cpu),
            Ok(Some(FloatDType::F16))
        );
        for (text, want) in [
            ("bf16", EvalDtype::Bfloat16),
            ("float16", EvalDtype::Float16),
            ("FP32", EvalDtype::Float32),
            ("auto", EvalDtype::Auto),
        ] {
            assert_eq!(text.parse::<EvalDtype>(), Ok(want));
        }
        let e = "int8".parse::<EvalDtype>().unwrap_err();
        assert!(e.contains("int8") && e.contains("bfloat16"), "{e}");
    }
}
