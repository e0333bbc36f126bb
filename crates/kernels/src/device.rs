//! Choosing the device merges run on.

use burn::tensor::Device;
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

/// Whether a wgpu adapter answers (always false without the `wgpu` feature).
pub fn wgpu_available() -> bool {
    wgpu_device().is_some()
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Option<Device> {
    use std::sync::OnceLock;
    static PROBE: OnceLock<bool> = OnceLock::new();
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let ok = *PROBE.get_or_init(|| {
        let d = device.clone();
        // burn initialises the adapter lazily and panics when none exists; probe once.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(move || {
            let t = burn::tensor::Tensor::<1>::from_floats([1.0f32, 2.0], &d);
            crate::scalar(t.sum()) == 3.0
        })
        .unwrap_or(false);
        std::panic::set_hook(prev);
        ok
    });
    ok.then_some(device)
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Option<Device> {
    None
}
