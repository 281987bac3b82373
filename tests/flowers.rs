//! The flower exercise's data side: an unsplit folder of classes cut by `--split` (stratified,
//! seeded, files beside the classes ignored), identical photos across classes and parts
//! reported with both paths (on the two real data sets too), and TensorFlow's
//! flower_photos.tgz downloaded from a server on 127.0.0.1: size and SHA-256 checked before
//! unpacking, a cut-off or wrong file kept nowhere, entries that leave the folder, links and
//! devices refused.

mod support;

use image::{Rgb, RgbImage};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use transfer_workbook::data::download::{download_extract_tgz, Expected, Hash};
use transfer_workbook::data::{duplicates, ImageFolder, SplitSpec};
use transfer_workbook::tasks::experiment::load_parts;

fn write_png(path: &Path, color: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(6, 5, Rgb(color)).save(path).unwrap();
}

/// `root/<class>/NN.png` for 3 classes of 20, every image distinct, plus files beside the classes.
fn unsplit(root: &Path) {
    for c in 0..3u8 {
        for i in 0..20u8 {
            write_png(&root.join(format!("class{c}/{i:02}.png")), [c, i, 7]);
        }
    }
    std::fs::write(root.join("SOURCE.txt"), "where the photos come from").unwrap();
    std::fs::write(root.join("MANIFEST.sha256"), "").unwrap();
}

#[test]
fn split_fractions_are_checked_and_name_the_flag() {
    assert_eq!(SplitSpec::parse("0.8,0.1,0.1", 3).unwrap(), SplitSpec { train: 0.8, val: 0.1, test: 0.1, seed: 3 });
    assert_eq!(SplitSpec::parse("0.7, 0.3", 0).unwrap(), SplitSpec { train: 0.7, val: 0.0, test: 0.3, seed: 0 });
    for (text, says) in [
        ("0.8,0.3", "sum to 1 (they sum to 1.1)"),
        ("0.8,0.1,0.1,0", "give 3 fractions"),
        ("0.9,0.1,0", "test above 0"),
        ("a,b", "expected fractions"),
        ("1.2,-0.1,-0.1", "in [0, 1]"),
    ] {
        let e = SplitSpec::parse(text, 0).unwrap_err().to_string();
        assert!(e.contains("--split") && e.contains(says), "{text}: {e}");
    }
}

#[test]
fn an_unsplit_folder_is_cut_stratified_and_seeded_and_the_notes_beside_it_are_no_classes() {
    let dir = tempfile::tempdir().unwrap();
    unsplit(dir.path());
    let spec = SplitSpec::parse("0.8,0.1,0.1", 5).unwrap();
    let parts = load_parts(dir.path(), Some(&spec), None, 0, None).unwrap();
    assert_eq!(parts.train.classes, vec!["class0", "class1", "class2"]);
    assert_eq!(parts.train.class_counts(), vec![16, 16, 16]);
    assert_eq!(parts.val.as_ref().unwrap().class_counts(), vec![2, 2, 2]);
    assert_eq!(parts.test.class_counts(), vec![2, 2, 2]);
    // Every photo once, in exactly one part.
    let mut all: Vec<_> = parts.named().iter().flat_map(|(_, ds)| ds.paths.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60);
    assert!(parts.duplicates.is_empty());
    // The same seed cuts the same way; another seed another way.
    let again = load_parts(dir.path(), Some(&spec), None, 0, None).unwrap();
    assert_eq!(again.test.paths, parts.test.paths);
    let other = load_parts(dir.path(), Some(&SplitSpec { seed: 6, ..spec }), None, 0, None).unwrap();
    assert_ne!(other.test.paths, parts.test.paths);
    // Without validation: two parts.
    let two = load_parts(dir.path(), Some(&SplitSpec::parse("0.75,0.25", 0).unwrap()), None, 0, None).unwrap();
    assert!(two.val.is_none());
    assert_eq!((two.train.len(), two.test.len()), (45, 15));
}

#[test]
fn a_split_that_fits_the_folder_badly_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    unsplit(dir.path());
    let spec = SplitSpec::parse("0.8,0.1,0.1", 0).unwrap();
    let err = |r: anyhow::Result<transfer_workbook::tasks::experiment::DataParts>| format!("{:#}", r.err().expect("refused"));
    // No --split on an unsplit folder: the error says what to pass.
    let e = err(load_parts(dir.path(), None, None, 0, None));
    assert!(e.contains("unsplit") && e.contains("--split 0.8,0.1,0.1"), "{e}");
    // --split with --val-split.
    let e = err(load_parts(dir.path(), Some(&spec), Some(0.2), 0, None));
    assert!(e.contains("--val-split") && e.contains("--split"), "{e}");
    // A class too small for a part.
    write_png(&dir.path().join("tiny/0.png"), [9, 9, 9]);
    let e = err(load_parts(dir.path(), Some(&spec), None, 0, None));
    assert!(e.contains("class 'tiny'") && e.contains("no validation photo"), "{e}");
    // An already split folder.
    let split = tempfile::tempdir().unwrap();
    support::write_color_dataset(split.path(), 2, 1);
    let e = err(load_parts(split.path(), Some(&spec), None, 0, None));
    assert!(e.contains("already split") && e.contains("drop --split"), "{e}");
}

#[test]
fn the_same_photo_in_two_classes_or_on_both_sides_is_reported_with_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    unsplit(dir.path());
    // class0/03.png filed under class1 too (an ambiguous label, like the roses/tulips photo).
    std::fs::copy(dir.path().join("class0/03.png"), dir.path().join("class1/zz-copy.png")).unwrap();
    let all = ImageFolder::load(dir.path()).unwrap();
    let found = duplicates::find(&[("all", &all)]);
    assert_eq!(found.across_classes.len(), 1, "{found:?}");
    assert!(found.leaks.is_empty());
    let (a, b) = &found.across_classes[0];
    assert!(a.path.ends_with("class0/03.png") && b.path.ends_with("class1/zz-copy.png"), "{a:?} {b:?}");
    assert!(found.lines()[0].contains("03.png") && found.lines()[0].contains("zz-copy.png"), "{:?}", found.lines());
    // A leak: one copy in train, one in test, same class (the hot-dog set's case).
    let (train, test) = (all.subset(&[0, 1, 2, 3]), all.subset(&[3, 4]));
    let found = duplicates::find(&[("train", &train), ("test", &test)]);
    assert_eq!(found.leaks.len(), 1, "{found:?}");
    assert_eq!((found.leaks[0].0.part.as_str(), found.leaks[0].1.part.as_str()), ("train", "test"));
    assert_eq!(found.summary(), "1 held-out photo also in train");
    let both = duplicates::Duplicates { across_classes: vec![found.leaks[0].clone()], ..found.clone() };
    assert_eq!(both.summary(), "1 photo in two classes, 1 held-out photo also in train");
}

/// The two real data sets: the hot-dog set has one test photo that is also a training photo;
/// the flower subset has none (its SOURCE.txt: the photo filed under roses and tulips was
/// left out), and `--split 0.8,0.1,0.1` cuts it 240/30/30 per class.
#[test]
fn duplicates_in_the_real_photos() {
    let (Some(hotdog), Some(flowers)) = (support::hotdog_photos(), support::flower_photos()) else { return };
    let parts = load_parts(&hotdog, None, None, 0, None).unwrap();
    assert!(parts.duplicates.across_classes.is_empty(), "{:?}", parts.duplicates);
    assert_eq!(parts.duplicates.leaks.len(), 1, "{:?}", parts.duplicates);
    let (train, test) = &parts.duplicates.leaks[0];
    assert!(train.path.ends_with("train/not_hot_dog/97656.jpg") && test.path.ends_with("test/not_hot_dog/76271.jpg"), "{train:?} {test:?}");
    let parts = load_parts(&flowers, Some(&SplitSpec::parse("0.8,0.1,0.1", 0).unwrap()), None, 0, None).unwrap();
    assert_eq!(parts.train.classes, vec!["daisy", "dandelion", "roses", "sunflowers", "tulips"]);
    assert_eq!(parts.train.class_counts(), vec![240; 5]);
    assert_eq!(parts.val.as_ref().unwrap().class_counts(), vec![30; 5]);
    assert_eq!(parts.test.class_counts(), vec![30; 5]);
    assert!(parts.duplicates.is_empty(), "{:?}", parts.duplicates);
}

// ---------------------------------------------------------------------------------------------
// flower_photos.tgz on 127.0.0.1

/// A tar entry written header by header, so that entries `tar::Builder` would refuse (a path
/// with `..`, an absolute one) can be made too.
fn entry(tar: &mut Vec<u8>, path: &str, kind: tar::EntryType, body: &[u8], link: Option<&str>) {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_gnu_mut().unwrap().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(body);
    tar.resize(tar.len().next_multiple_of(512), 0);
}

fn png(color: [u8; 3]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    RgbImage::from_pixel(8, 8, Rgb(color)).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// flower_photos.tgz in the original's layout (two classes of two photos, LICENSE.txt), with
/// `extra` entries appended.
fn flowers_tgz(extra: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut tar = Vec::new();
    entry(&mut tar, "flower_photos/", tar::EntryType::Directory, b"", None);
    entry(&mut tar, "flower_photos/LICENSE.txt", tar::EntryType::Regular, b"CC BY 2.0", None);
    for (class, color) in [("daisy", [240u8, 240, 200]), ("roses", [200, 30, 60])] {
        for i in 0..2u8 {
            entry(&mut tar, &format!("flower_photos/{class}/{i}.png"), tar::EntryType::Regular, &png([color[0], color[1], color[2] - i]), None);
        }
    }
    for (path, kind, link) in extra {
        entry(&mut tar, path, *kind, b"x", *link);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// Serves `body` (the first `send` bytes of it, under the full Content-Length) on 127.0.0.1;
/// returns the URL and a count of requests.
fn serve(body: Vec<u8>, send: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut s) = stream else { continue };
            let _ = s.read(&mut [0u8; 4096]);
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body[..send.min(body.len())]);
        }
    });
    (format!("http://{addr}/flower_photos.tgz"), count)
}

fn expected(body: &[u8]) -> Expected {
    use sha2::Digest;
    Expected { hash: Hash::Sha256(hex::encode(sha2::Sha256::digest(body))), size: Some(body.len() as u64) }
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default()
}

#[test]
fn the_flower_archive_is_checked_then_unpacked_once_into_an_unsplit_data_set() {
    let body = flowers_tgz(&[]);
    let want = expected(&body);
    let (url, count) = serve(body, usize::MAX);
    let cache = tempfile::tempdir().unwrap();
    let dir = download_extract_tgz(&url, &want, cache.path()).unwrap();
    assert_eq!(dir, cache.path().join("flower_photos"));
    let ds = ImageFolder::load(&dir).unwrap();
    assert_eq!(ds.classes, vec!["daisy", "roses"], "LICENSE.txt beside the classes is no class");
    assert_eq!(ds.len(), 4);
    // Once unpacked, no new request.
    download_extract_tgz(&url, &want, cache.path()).unwrap();
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_wrong_hash_a_wrong_size_or_a_cut_off_download_is_kept_nowhere() {
    let body = flowers_tgz(&[]);
    let good = expected(&body);
    let cache = tempfile::tempdir().unwrap();
    // Wrong SHA-256: both hashes named, nothing kept.
    let (url, _) = serve(body.clone(), usize::MAX);
    let wrong = Expected { hash: Hash::Sha256("4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c".into()), ..good.clone() };
    let e = format!("{:#}", download_extract_tgz(&url, &wrong, cache.path()).unwrap_err());
    let Hash::Sha256(good_hex) = &good.hash else { unreachable!() };
    assert!(e.contains("SHA-256 mismatch") && e.contains(good_hex.as_str()) && e.contains("4c54ace7"), "{e}");
    assert!(left_in(cache.path()).is_empty(), "{:?}", left_in(cache.path()));
    // The server offers another size than expected (TensorFlow's 228,813,984 bytes): refused before downloading.
    let e = format!("{:#}", download_extract_tgz(&url, &Expected { size: Some(228_813_984), ..good.clone() }, cache.path()).unwrap_err());
    assert!(e.contains("offers") && e.contains("228813984"), "{e}");
    assert!(left_in(cache.path()).is_empty(), "{:?}", left_in(cache.path()));
    // Cut off halfway: an error, no partial file, no data folder.
    let (url, _) = serve(body.clone(), body.len() / 2);
    let e = format!("{:#}", download_extract_tgz(&url, &good, cache.path()).unwrap_err());
    assert!(e.contains("connection ended") || e.contains("closed before"), "{e}");
    assert!(left_in(cache.path()).is_empty(), "{:?}", left_in(cache.path()));
}

#[test]
fn entries_that_leave_the_folder_links_and_devices_are_refused_and_nothing_is_kept() {
    for (extra, says) in [
        (("flower_photos/../../escaped.txt", tar::EntryType::Regular, None), "outside the target folder"),
        (("/srv/absolute.txt", tar::EntryType::Regular, None), "outside the target folder"),
        (("flower_photos/daisy/link.jpg", tar::EntryType::Symlink, Some("/etc/passwd")), "is a link"),
        (("flower_photos/daisy/hard.jpg", tar::EntryType::Link, Some("flower_photos/LICENSE.txt")), "is a link"),
        (("flower_photos/dev", tar::EntryType::Char, None), "is a device"),
        (("flower_photos/fifo", tar::EntryType::Fifo, None), "is a FIFO"),
    ] {
        let body = flowers_tgz(&[extra]);
        let want = expected(&body);
        let (url, _) = serve(body, usize::MAX);
        let cache = tempfile::tempdir().unwrap();
        let e = format!("{:#}", download_extract_tgz(&url, &want, cache.path()).unwrap_err());
        assert!(e.contains(says) && e.contains(extra.0.trim_start_matches('/')), "{}: {e}", extra.0);
        // The checked archive stays (it is what was asked for); nothing of its content does.
        assert_eq!(left_in(cache.path()), vec!["flower_photos.tgz"], "{}", extra.0);
        assert!(!cache.path().parent().unwrap().join("escaped.txt").exists());
    }
}

/// `finetune download --dataset flowers` with `$WORKBOOK_FLOWERS_URL` naming the loopback file.
#[test]
fn the_cli_downloads_the_flowers_from_the_url_it_is_given() {
    use sha2::Digest;
    let body = flowers_tgz(&[]);
    let sha = hex::encode(sha2::Sha256::digest(&body));
    let n = body.len();
    let (url, _) = serve(body, usize::MAX);
    let cache = tempfile::tempdir().unwrap();
    let run = |value: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_finetune"))
            .args(["download", "--dataset", "flowers", "--cache-dir"])
            .arg(cache.path())
            .env("WORKBOOK_FLOWERS_URL", value)
            .output()
            .unwrap()
    };
    let out = run(format!("{url}#sha256={sha}&size={n}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with("flower_photos"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = run(format!("{url}#sha256=1234"));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("WORKBOOK_FLOWERS_URL") && e.contains("sha256=<64 hex digits>"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The CLI: a run on an unsplit folder, then evaluate, predict and --resume on the same cut

fn cli(args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_finetune")).args(args).env("RUST_BACKTRACE", "0").output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// `scratch --split` records the cut: `evaluate` on the same unsplit folder scores the same test
/// photos (the same accuracy and confusion matrix as the run's metrics.json), `predict --part
/// test` predicts exactly the cut's test photos, and `--resume` with another cut is refused.
#[test]
fn a_run_with_split_records_its_cut_for_evaluate_predict_and_resume() {
    let data = tempfile::tempdir().unwrap();
    unsplit(data.path());
    let out = tempfile::tempdir().unwrap();
    let (d, o) = (data.path().to_str().unwrap(), out.path().to_str().unwrap());
    let train = |split: &str, extra: &[&str]| {
        let mut a = vec!["scratch", "--data", d, "--split", split, "--seed", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--out", o, "--quiet"];
        a.extend_from_slice(extra);
        cli(&a)
    };
    let (ok, text) = train("0.6,0.2,0.2", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("--split 0.6,0.2,0.2 (seed 4): 36 train, 12 validation, 12 test photos"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("data.json")).unwrap()).unwrap();
    assert_eq!(json["split"]["seed"], 4);
    assert_eq!(json["parts"]["test"]["photos"], 12);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap()).unwrap();
    let model = out.path().join("model.safetensors");
    let m = model.to_str().unwrap();
    let eval_out = tempfile::tempdir().unwrap();
    let (ok, text) = cli(&["evaluate", "--weights", m, "--data", d, "--out", eval_out.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("recorded in the model file"), "{text}");
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(eval_out.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(again["accuracy"], metrics["accuracy"], "evaluate scored other photos than the run's test part");
    assert_eq!(again["confusion"], metrics["confusion"]);
    assert_eq!(again["images"], 12);
    // predict --part test: the 12 test photos, each once.
    let (ok, text) = cli(&["predict", "--weights", m, "--part", "test", d, "--format", "csv"]);
    assert!(ok, "{text}");
    let parts = load_parts(data.path(), Some(&SplitSpec::parse("0.6,0.2,0.2", 4).unwrap()), None, 0, None).unwrap();
    for p in &parts.test.paths {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let class = p.parent().unwrap().file_name().unwrap().to_string_lossy().to_string();
        assert!(text.contains(&format!("{class}/{name}")), "{class}/{name} not predicted:\n{text}");
    }
    assert!(text.contains("predicted 12 images"), "{text}");
    // Resuming with another cut is refused: its training photos differ (the run's data fingerprint).
    let (ok, text) = train("0.4,0.3,0.3", &["--resume"]);
    assert!(!ok && text.contains("--resume") && text.contains("training or validation photos"), "{text}");
}
