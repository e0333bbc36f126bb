use crate::CheckpointError;
use half::{bf16, f16};
use std::fmt;
use std::str::FromStr;

/// Element type of a stored tensor. Merge arithmetic always runs in `f32`; these are storage types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether values of this type can be merged (converted to and from `f32`).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// The name used in safetensors headers (`"BF16"`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// The name used by `config.json`'s `torch_dtype` (`"bfloat16"`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    pub(crate) fn from_safetensors(d: safetensors::Dtype) -> Option<Dtype> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F64 => Dtype::F64,
            S::F32 => Dtype::F32,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::I64 => Dtype::I64,
            S::I32 => Dtype::I32,
            S::I16 => Dtype::I16,
            S::I8 => Dtype::I8,
            S::U8 => Dtype::U8,
            S::BOOL => Dtype::Bool,
            _ => return None,
        })
    }

    /// Convert little-endian stored values to `f32`, writing into `out` (same element count).
    ///
    /// Panics if `bytes.len() != out.len() * self.size()` or the type is not a float type; the
    /// callers check both.
    pub fn decode_f32(self, bytes: &[u8], out: &mut [f32]) {
        assert_eq!(bytes.len(), out.len() * self.size(), "decode_f32 length");
        match self {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                }
            }
            Dtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            Dtype::F64 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                    *o = f64::from_le_bytes(c.try_into().unwrap()) as f32;
                }
            }
            other => panic!("decode_f32 on non-float dtype {other}"),
        }
    }

    /// Convert `f32` values to this storage type (little endian), appending to `out`.
    /// Rounding is round-to-nearest-even for f16 and bf16, as torch does.
    pub fn encode_f32(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            Dtype::F32 => {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Dtype::BF16 => {
                for v in values {
                    out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            Dtype::F16 => {
                for v in values {
                    out.extend_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
            Dtype::F64 => {
                for v in values {
                    out.extend_from_slice(&(*v as f64).to_le_bytes());
                }
            }
            other => panic!("encode_f32 on non-float dtype {other}"),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

impl FromStr for Dtype {
    type Err = CheckpointError;

    /// Accepts torch names with or without the `torch.` prefix (`bfloat16`, `torch.float16`),
    /// the short forms `bf16`/`fp16`/`f16`/`fp32`/`f32`, and safetensors names (`BF16`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_start_matches("torch.").to_ascii_lowercase();
        Ok(match t.as_str() {
            "float32" | "fp32" | "f32" | "float" => Dtype::F32,
            "float16" | "fp16" | "f16" | "half" => Dtype::F16,
            "bfloat16" | "bf16" => Dtype::BF16,
            "float64" | "fp64" | "f64" | "double" => Dtype::F64,
            "int64" | "i64" => Dtype::I64,
            _ => return Err(CheckpointError::UnknownDtype(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_each_float_dtype() {
        let values = [0.0f32, 1.0, -2.5, 3.140625, 1e-3, -65504.0];
        for d in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let mut bytes = Vec::new();
            d.encode_f32(&values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * d.size());
            let mut back = vec![0f32; values.len()];
            d.decode_f32(&bytes, &mut back);
            for (a, b) in values.iter().zip(&back) {
                let tol = match d {
                    Dtype::BF16 => a.abs() * 4e-3,
                    Dtype::F16 => a.abs() * 1e-3,
                    _ => 0.0,
                };
                assert!((a - b).abs() <= tol, "{d}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7); ties go to even (1.0).
        let mut bytes = Vec::new();
        Dtype::BF16.encode_f32(&[1.0 + 2f32.powi(-8)], &mut bytes);
        let mut back = [0f32];
        Dtype::BF16.decode_f32(&bytes, &mut back);
        assert_eq!(back[0], 1.0);
    }

    #[test]
    fn parses_names() {
        assert_eq!("torch.bfloat16".parse::<Dtype>().unwrap(), Dtype::BF16);
        assert_eq!("float16".parse::<Dtype>().unwrap(), Dtype::F16);
        assert_eq!("F32".parse::<Dtype>().unwrap(), Dtype::F32);
        assert!("float8".parse::<Dtype>().is_err());
    }
}
