//! `cpu`, `cuda`, `cuda:N` to a Candle device, with a clear error for anything else.

use anyhow::bail;
use candle_core::Device;

pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let n = name.trim().to_ascii_lowercase();
    if n == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match n.as_str() {
        "cuda" | "gpu" => Some(0),
        _ => n.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()),
    };
    match ordinal {
        Some(i) if candle_core::utils::cuda_is_available() => Ok(Device::new_cuda(i)?),
        Some(_) => bail!("device '{name}': this build has no CUDA support (rebuild with `--features cuda`)"),
        None => bail!("unknown device '{name}' (expected cpu, cuda or cuda:N)"),
    }
}

/// `cpu` or `cuda:N`, for reports.
pub fn device_label(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
