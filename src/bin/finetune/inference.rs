//! A model on photos: predict, evaluate, zero-shot.

use crate::args::{self, choice, COUNT, CacheArgs, DataArgs, DeviceArgs, IMAGE_SIZE};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;
use transfer_workbook::checkpoint::{default_weights, load_model, load_model_with_card, WeightsSource};
use transfer_workbook::data::{ImageFolder, SplitSpec};
use transfer_workbook::device_label;
use transfer_workbook::models::Arch;
use transfer_workbook::tasks::predict::report::Format;
use transfer_workbook::transforms::{Normalization, Pipeline};

#[derive(Args)]
pub struct PredictArgs {
    /// Image files, folders (searched recursively for image files) and glob patterns ('photos/*.jpg').
    /// Unreadable images are skipped with a warning; the exit code is non-zero only if none could be read.
    #[arg(required = true)]
    images: Vec<String>,
    /// A model.safetensors written by a training command, or pretrained ImageNet weights.
    #[arg(long)]
    weights: Option<String>,
    /// Needed when the weights file does not name it.
    #[arg(long, value_parser = choice::<Arch>())]
    backbone: Option<Arch>,
    #[arg(long, default_value_t = 5, value_parser = COUNT)]
    top_k: usize,
    /// Input size (default: the one in the model file, else the backbone's own: 224; efficientnet-lite1 240, efficientnet-lite2 260).
    #[arg(long, value_parser = IMAGE_SIZE)]
    image_size: Option<u32>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = COUNT)]
    batch_size: usize,
    #[arg(long, default_value = "text", value_parser = choice::<Format>())]
    format: Format,
    /// Predict one part (train, val or test) of the unsplit folder given as the one input, cut
    /// as the model's training cut it (its recorded --split).
    #[arg(long, value_parser = ["train", "val", "test"])]
    part: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

/// A model for inference: a run's model.safetensors (backbone, classes, image size and
/// normalization in its metadata), or pretrained weights with their ImageNet head.
pub fn predict(a: PredictArgs) -> anyhow::Result<()> {
    use transfer_workbook::tasks::predict::{inputs::expand_inputs, predict_files, report::write_records, Preprocess};
    // The card's size (known only once the model is read) is checked below, --image-size here.
    crate::args::fits(a.batch_size, a.image_size.unwrap_or(224), false)?;
    let source = match (&a.weights, a.backbone) {
        (Some(w), _) => WeightsSource::parse(w),
        (None, Some(arch)) => default_weights(arch),
        (None, None) => bail!("pass --weights (a trained model.safetensors or pretrained weights) or --backbone"),
    };
    let (model, card) = load_model_with_card(&source, a.backbone, &a.device.device, a.cache.hub().as_deref())?;
    let paths = match &a.part {
        None => expand_inputs(&a.images)?,
        Some(part) => {
            let Some(spec) = card.split else {
                bail!("--part {part}: {} records no --split (it was not trained on a cut of an unsplit folder)", source.describe());
            };
            let [dir] = a.images.as_slice() else {
                bail!("--part {part} takes one input, the unsplit folder the model was trained on ({} given)", a.images.len());
            };
            let ds = load_part(std::path::Path::new(dir), &spec, part)?;
            eprintln!("--part {part} of --split {} (recorded in the model file): {} photos", spec.describe(), ds.len());
            ds.paths.clone()
        }
    };
    let mut pre = Preprocess::from_card(&model, &card);
    pre.image_size = a.image_size.unwrap_or(pre.image_size);
    crate::args::batch_and_size(a.batch_size, pre.image_size, false)?;
    let said = if card.image_size.is_some() { "from the model file" } else { "defaults" };
    eprintln!("{} images; {} px, normalization {:?} ({said}, --image-size overrides)", paths.len(), pre.image_size, pre.normalization);
    let out = predict_files(&model, &paths, &pre, a.top_k, a.batch_size)?;
    write_records(&mut std::io::stdout().lock(), &out.records, a.format)?;
    eprintln!("predicted {} images, skipped {} unreadable", out.records.len(), out.skipped.len());
    if out.records.is_empty() {
        bail!("none of the {} files could be read as an image", paths.len());
    }
    Ok(())
}

/// One part (`train`, `val` or `test`, as `--part` takes them) of the unsplit folder `dir` cut by `spec`.
fn load_part(dir: &std::path::Path, spec: &SplitSpec, part: &str) -> anyhow::Result<Arc<ImageFolder>> {
    let parts = transfer_workbook::tasks::experiment::load_parts(dir, Some(spec), None, spec.seed, None)?;
    Ok(match part {
        "train" => parts.train,
        "val" => parts.val.with_context(|| format!("--part val: the cut {} has no validation part", spec.describe()))?,
        _ => parts.test,
    })
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// A model.safetensors written by a training command.
    #[arg(long)]
    weights: String,
    #[command(flatten)]
    data: DataArgs,
    /// A part of the data folder: its sub-folder (test, val, train), or, for an unsplit folder of
    /// classes, fractions train,validation,test to cut it by (as the training's --split). A model
    /// trained with --split records its cut: an unsplit DIR is then cut the same way unasked.
    #[arg(long, default_value = "test")]
    split: String,
    /// Which part of a cut (--split fractions, or the model's recorded one) to evaluate.
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    part: String,
    /// The seed of a --split given as fractions (default: the model's recorded cut's, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Needed when the weights file does not name it.
    #[arg(long, value_parser = choice::<Arch>())]
    backbone: Option<Arch>,
    /// Default: the size stored in the model file (else the backbone's own).
    #[arg(long, value_parser = IMAGE_SIZE)]
    image_size: Option<u32>,
    #[arg(long, default_value_t = 64, value_parser = COUNT)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Where metrics.json, confusion.png and top-losses.png go.
    #[arg(long, default_value = "runs/evaluate")]
    out: PathBuf,
}

/// `finetune evaluate`: a saved model on one split of a data folder.
pub fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    crate::args::fits(a.batch_size, a.image_size.unwrap_or(224), false)?;
    let (model, card) = load_model_with_card(&WeightsSource::parse(&a.weights), a.backbone, &a.device.device, a.data.cache.hub().as_deref())?;
    let image_size = a.image_size.unwrap_or(card.image_size_for(model.arch));
    crate::args::batch_and_size(a.batch_size, image_size, false).with_context(|| format!("the image size of {}", a.weights))?;
    let dir = a.data.dir()?;
    // A cut of an unsplit folder: fractions given, or the model's own where DIR has no such sub-folder.
    let cut = if a.split.contains(',') {
        Some(SplitSpec::parse(&a.split, a.seed.or(card.split.map(|s| s.seed)).unwrap_or(0))?)
    } else if !dir.join(&a.split).is_dir() && !dir.join("train").is_dir() {
        card.split.map(|s| SplitSpec { seed: a.seed.unwrap_or(s.seed), ..s })
    } else {
        None
    };
    let (ds, name) = match cut {
        Some(spec) => {
            eprintln!("cutting {} by --split {}{}", dir.display(), spec.describe(), if a.split.contains(',') { "" } else { " (recorded in the model file)" });
            (load_part(&dir, &spec, &a.part)?, a.part.clone())
        }
        None => {
            let ds = ImageFolder::load_classes(dir.join(&a.split), &model.class_names).with_context(|| format!("loading the '{}' split of {}", a.split, dir.display()))?;
            eprintln!("{}", ds.summary());
            (Arc::new(ds), a.split.clone())
        }
    };
    let pipeline = Pipeline::d2l_test(image_size, card.normalization_for(model.arch));
    let ev = transfer_workbook::tasks::evaluation::evaluate_split_with(&model, &ds, &name, &pipeline, a.batch_size)?;
    let title = format!("{}: {} on {}", a.weights, model.arch, name);
    transfer_workbook::tasks::evaluation::write_report(&ev, &ds, &title, &a.out)?;
    eprintln!("wrote {}/{{metrics.json, confusion.png, top-losses.png}}", a.out.display());
    println!("{}", ev.metrics.table());
    Ok(())
}

/// `--normalization`: the input contracts of the Keras applications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preprocessing {
    /// ImageNet mean/std (torchvision, ResNet).
    Imagenet,
    /// Scaled to [-1, 1] (TensorFlow, EfficientNet-Lite).
    #[value(alias = "minus-one-one")]
    Tf,
    /// BGR minus the ImageNet mean (Caffe).
    Caffe,
    /// Scaled to [0, 1].
    Unit,
}

impl From<Preprocessing> for Normalization {
    fn from(p: Preprocessing) -> Self {
        match p {
            Preprocessing::Imagenet => Normalization::imagenet(),
            Preprocessing::Tf => Normalization::MinusOneOne,
            Preprocessing::Caffe => Normalization::CaffeBgr,
            Preprocessing::Unit => Normalization::Unit,
        }
    }
}

#[derive(Args)]
pub struct ZeroShotArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value = "efficientnet-lite0", value_parser = choice::<Arch>())]
    backbone: Arch,
    /// Pretrained ImageNet weights (default: the backbone's).
    #[arg(long)]
    weights: Option<String>,
    /// The folder holding hot dogs (default: the one named like 'hotdog').
    #[arg(long)]
    positive_class: Option<String>,
    /// Override the backbone's preprocessing, to compare contracts.
    #[arg(long)]
    normalization: Option<Preprocessing>,
    /// Default: the backbone's own (224; efficientnet-lite1 240, efficientnet-lite2 260).
    #[arg(long, value_parser = IMAGE_SIZE)]
    image_size: Option<u32>,
    #[arg(long, default_value_t = 50, value_parser = COUNT)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Classify the test photos with the untouched ImageNet head.
pub fn zero_shot(a: ZeroShotArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let arch = a.backbone;
    let device = &a.device.device;
    let image_size = a.image_size.unwrap_or(arch.default_image_size());
    crate::args::fits(a.batch_size, image_size, false)?;
    let model = load_model(&args::weights_source(arch, &a.weights), Some(arch), device, a.data.cache.hub().as_deref())?;
    if model.num_classes() != 1000 {
        bail!("zero-shot needs ImageNet weights with their 1000-class head");
    }
    let dir = a.data.dir()?;
    let ds = Arc::new(ImageFolder::load(dir.join(&a.split))?);
    eprintln!("{}", ds.summary());
    let positive = transfer_workbook::tasks::zero_shot::positive_class(&ds.classes, a.positive_class.as_deref())?;
    let norm = a.normalization.map(Normalization::from).unwrap_or(arch.normalization());
    let pipeline = Pipeline::d2l_test(image_size, norm);
    let r = transfer_workbook::tasks::zero_shot::zero_shot(&model, &ds, &pipeline, positive, a.batch_size)?;
    eprintln!("{} images, positive class '{}', class 934 = '{}', normalization {norm:?}", r.images, ds.classes[positive], model.class_names[934]);
    println!("top-5 test acc {:.3}", r.top5_acc);
    println!("test acc {:.3}", r.top1_acc);
    eprintln!("{:.1} s on {}", t0.elapsed().as_secs_f64(), device_label(device));
    Ok(())
}
