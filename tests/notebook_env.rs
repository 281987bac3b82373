//! The notebooks' environment switches: `WORKBOOK_DEVICE` picks the device of every experiment a
//! notebook builds (`Setting::experiment`) and of its benchmarks (`notebook::device`), and a bad
//! value is an error that names the variable. One test in its own binary: it sets process-wide
//! environment variables, which no other test may read at the same time.

use transfer_workbook::candle_core::{utils::cuda_is_available, DeviceLocation};
use transfer_workbook::models::Arch;
use transfer_workbook::tasks::notebook::{device, kernels, Setting};
use transfer_workbook::ops::Precision;
use transfer_workbook::train::recipes;
use transfer_workbook::{device_label, ModelInit};

fn experiment_device() -> transfer_workbook::anyhow::Result<DeviceLocation> {
    let exp = Setting::Quick.experiment("env-test", Arch::ResNet18, ModelInit::Scratch, vec![recipes::d2l_scratch(1)])?;
    Ok(exp.device.location())
}

#[test]
fn workbook_device_and_precision_pick_or_refuse_by_name() {
    // The experiment's data folder is only named here, never read.
    std::env::set_var("WORKBOOK_DATA", "data-that-is-not-read");

    std::env::remove_var("WORKBOOK_DEVICE");
    assert!(matches!(device().unwrap().location(), DeviceLocation::Cpu));
    assert!(matches!(experiment_device().unwrap(), DeviceLocation::Cpu));

    for cpu in ["cpu", " CPU "] {
        std::env::set_var("WORKBOOK_DEVICE", cpu);
        assert_eq!(device_label(&device().unwrap()), "cpu", "WORKBOOK_DEVICE={cpu:?}");
        assert!(matches!(experiment_device().unwrap(), DeviceLocation::Cpu));
    }

    std::env::set_var("WORKBOOK_DEVICE", "tpu");
    for err in [device().unwrap_err(), experiment_device().unwrap_err()] {
        let msg = format!("{err:#}");
        assert!(msg.contains("WORKBOOK_DEVICE") && msg.contains("unknown device 'tpu'"), "{msg}");
    }

    for cuda in ["cuda", "cuda:1"] {
        std::env::set_var("WORKBOOK_DEVICE", cuda);
        match device() {
            Ok(d) => {
                assert!(cuda_is_available(), "{cuda} gave a device in a build without CUDA");
                assert!(matches!(d.location(), DeviceLocation::Cuda { .. }));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("WORKBOOK_DEVICE"), "{msg}");
                // A CUDA build without that GPU fails in the driver, whose words are its own.
                if !cuda_is_available() {
                    assert!(msg.contains(cuda) && msg.contains("no CUDA support"), "{msg}");
                }
            }
        }
    }
    std::env::remove_var("WORKBOOK_DEVICE");

    std::env::remove_var("WORKBOOK_PRECISION");
    assert_eq!(kernels().unwrap().precision, Precision::F32);
    std::env::set_var("WORKBOOK_PRECISION", "bf16");
    match transfer_workbook::ops::bf16_supported() {
        true => assert_eq!(kernels().unwrap().precision, Precision::Bf16),
        false => assert!(format!("{:#}", kernels().unwrap_err()).contains("WORKBOOK_PRECISION")),
    }
    std::env::set_var("WORKBOOK_PRECISION", "f64");
    let msg = format!("{:#}", kernels().unwrap_err());
    assert!(msg.contains("WORKBOOK_PRECISION=f64"), "{msg}");
    std::env::remove_var("WORKBOOK_PRECISION");
}
