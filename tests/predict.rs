//! `predict` on files, folders and globs: batched results equal one-at-a-time results, the
//! model file's card sets the preprocessing, bad images are skipped and counted, and the JSON
//! and CSV outputs have one record per readable image.

mod support;

use candle_core::Device;
use image::RgbImage;
use transfer_workbook::checkpoint::ModelCard;
use transfer_workbook::models::{Arch, Classifier, ModelOptions};
use transfer_workbook::tasks::predict::inputs::expand_inputs;
use transfer_workbook::tasks::predict::{predict, predict_batch, predict_files, Preprocess};
use transfer_workbook::transforms::Normalization;

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn inputs_expand_folders_recursively_and_globs_and_name_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    std::fs::create_dir_all(d.path().join("empty/inner")).unwrap();
    let img = RgbImage::new(8, 8);
    for f in ["a/2.png", "a/1.jpg", "a/sub/3.png"] {
        img.save(d.path().join(f)).unwrap();
    }
    std::fs::write(a.join("notes.txt"), "not an image").unwrap();
    std::fs::write(d.path().join("empty/inner/readme.md"), "").unwrap();
    let s = |p: &str| d.path().join(p).to_str().unwrap().to_string();
    let got = expand_inputs(&[s("a")]).unwrap();
    assert_eq!(got, vec![a.join("1.jpg"), a.join("2.png"), a.join("sub/3.png")]);
    // A glob, a file given twice (kept once), a folder matched by a glob.
    let got = expand_inputs(&[s("a/*.png"), s("a/2.png"), s("a/su*")]).unwrap();
    assert_eq!(got, vec![a.join("2.png"), a.join("sub/3.png")]);
    for (input, needle) in [(s("empty"), "has no image files"), (s("nothere.jpg"), "no such file or folder"), (s("a/*.gif"), "matches no files")] {
        let e = format!("{:#}", expand_inputs(&[input.clone()]).unwrap_err());
        assert!(e.contains(needle) && e.contains(input.trim_end_matches("/*.gif")), "{e}");
    }
}

/// A link to a parent folder is not followed (it looped until the path was too long), a link
/// to a photo is a photo, a link to nothing is listed and then skipped and counted.
#[cfg(unix)]
#[test]
fn folders_do_not_follow_links_to_folders() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    std::fs::create_dir_all(a.join("sub")).unwrap();
    RgbImage::new(8, 8).save(a.join("sub/1.png")).unwrap();
    symlink(&a, a.join("sub/up")).unwrap();
    symlink(a.join("sub/1.png"), a.join("2.png")).unwrap();
    symlink(d.path().join("gone.png"), a.join("3.png")).unwrap();
    let got = expand_inputs(&[a.to_str().unwrap().to_string()]).unwrap();
    assert_eq!(got, vec![a.join("2.png"), a.join("3.png"), a.join("sub/1.png")]);
    // The link to nothing is listed, then skipped and counted by the reader, naming its target.
    let model = Classifier::scratch(&ModelOptions::new(Arch::ResNet18, vec!["a".into(), "b".into()]), &Device::Cpu).unwrap();
    let pre = Preprocess { image_size: 32, normalization: Arch::ResNet18.normalization() };
    let out = predict_files(&model, &got, &pre, 1, 8).unwrap();
    assert_eq!(out.records.len(), 2);
    assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
    assert_eq!(out.skipped[0].0, a.join("3.png"));
    assert!(out.skipped[0].1.contains("a link to nothing") && out.skipped[0].1.contains("gone.png"), "{}", out.skipped[0].1);
}

#[test]
fn batched_predictions_equal_one_at_a_time_and_follow_the_card() {
    let classes = vec!["blue".to_string(), "red".to_string(), "green".to_string()];
    let model = Classifier::scratch(&ModelOptions::new(Arch::ResNet18, classes), &Device::Cpu).unwrap();
    let imgs: Vec<RgbImage> = (0..3u32).map(|i| RgbImage::from_fn(40 + 9 * i, 50, |x, y| image::Rgb([(x * 5) as u8, (y * 3 + i * 40) as u8, 90]))).collect();
    let pre = Preprocess { image_size: 32, normalization: Arch::ResNet18.normalization() };
    let batch = predict_batch(&model, &imgs, &pre, 2).unwrap();
    assert_eq!(batch.len(), 3);
    for (img, b) in imgs.iter().zip(&batch) {
        let one = predict(&model, img, 32, 2).unwrap();
        assert_eq!(b.len(), 2);
        for (p, q) in b.iter().zip(&one) {
            assert_eq!(p.index, q.index);
            assert!((p.probability - q.probability).abs() < 1e-5, "{p:?} {q:?}");
        }
        assert!(b[0].probability >= b[1].probability);
    }
    assert!(predict_batch(&model, &[], &pre, 2).unwrap().is_empty());
    // The card decides size and normalization; without one, 224 px and the backbone's own.
    let card = ModelCard { image_size: Some(48), normalization: Some(Normalization::Unit), ..Default::default() };
    assert_eq!(Preprocess::from_card(&model, &card), Preprocess { image_size: 48, normalization: Normalization::Unit });
    assert_eq!(Preprocess::from_card(&model, &ModelCard::default()), Preprocess { image_size: 224, normalization: Normalization::imagenet() });
    // A different normalization gives different probabilities: it is really used.
    let unit = predict_batch(&model, &imgs[..1], &Preprocess { normalization: Normalization::Unit, ..pre }, 3).unwrap();
    let p = |v: &[transfer_workbook::tasks::predict::Prediction]| { let mut v = v.to_vec(); v.sort_by_key(|p| p.index); v.iter().map(|p| p.probability).collect::<Vec<_>>() };
    assert_ne!(p(&unit[0]), p(&predict_batch(&model, &imgs[..1], &pre, 3).unwrap()[0]));
}

#[test]
fn cli_predicts_a_folder_as_json_and_csv_skipping_corrupt_files() {
    let data = tempfile::tempdir().unwrap();
    support::write_color_dataset(data.path(), 8, 3);
    let out = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_finetune");
    let o = std::process::Command::new(bin)
        .args(["scratch", "--data", data.path().to_str().unwrap(), "--image-size", "40", "--epochs", "1", "--batch-size", "8", "--out", out.path().to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let model = out.path().join("model.safetensors");
    let test = data.path().join("test");
    std::fs::write(test.join("red/broken.png"), b"not a png at all").unwrap();
    let predict = |extra: &[&str]| {
        std::process::Command::new(bin).args(["predict", "--weights", model.to_str().unwrap(), "--batch-size", "4", "--top-k", "2"]).args(extra).output().unwrap()
    };
    let o = predict(&[test.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.png") && err.contains("skipped 1"), "{err}");
    // The card's 40 px, not the old 224 default.
    assert!(err.contains("40 px") && err.contains("from the model file"), "{err}");
    let recs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let recs = recs.as_array().unwrap();
    assert_eq!(recs.len(), 6);
    for r in recs {
        assert!(["blue", "red"].contains(&r["class"].as_str().unwrap()));
        assert_eq!(r["top_k"].as_array().unwrap().len(), 2);
        assert_eq!(r["top_k"][0]["probability"], r["probability"]);
    }
    let glob = format!("{}/*/*.png", test.display());
    let o = predict(&[&glob, "--format", "csv", "--image-size", "48"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("48 px"));
    let csv = String::from_utf8_lossy(&o.stdout);
    assert_eq!(csv.lines().next().unwrap(), "path,class,probability,top_k");
    assert_eq!(csv.lines().count(), 7, "{csv}");
    // Only unreadable files: nothing predicted, a non-zero exit naming the file.
    let o = predict(&[test.join("red/broken.png").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("broken.png") && text(&o).contains("none of the 1 files"), "{}", text(&o));
    let empty = tempfile::tempdir().unwrap();
    let o = predict(&[empty.path().to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("has no image files") && text(&o).contains(empty.path().to_str().unwrap()), "{}", text(&o));
}
