//! Loading image folders (corrupt and non-image files are skipped and counted) and the
//! SHA-1-checked downloader, tested against a real HTTP server on 127.0.0.1.

use image::{Rgb, RgbImage};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use transfer_workbook::data::download::{download, download_extract, sha1_file};
use transfer_workbook::data::ImageFolder;

fn write_png(path: &Path, color: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(12, 10, Rgb(color)).save(path).unwrap();
}

#[test]
fn loads_sorted_classes_and_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..3 {
        write_png(&root.join(format!("not-hotdog/{i}.png")), [0, 0, 255]);
    }
    for i in 0..2 {
        write_png(&root.join(format!("hotdog/{i}.png")), [255, 0, 0]);
    }
    std::fs::write(root.join("hotdog/broken.jpg"), b"this is not a jpeg").unwrap();
    std::fs::write(root.join("hotdog/notes.txt"), b"hello").unwrap();
    let ds = ImageFolder::load(root).unwrap();
    assert_eq!(ds.classes, vec!["hotdog", "not-hotdog"]);
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.class_counts(), vec![2, 3]);
    assert_eq!(ds.skipped.len(), 2);
    let reasons: Vec<String> = ds.skipped.iter().map(|s| format!("{}: {}", s.path.display(), s.reason)).collect();
    assert!(reasons.iter().any(|r| r.contains("broken.jpg") && r.contains("are not JPEG, PNG")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("notes.txt") && r.contains("not an image")), "{reasons:?}");
    assert!(ds.summary().contains("2 files skipped"));
    assert_eq!(ds.images[0].get_pixel(0, 0), &Rgb([255, 0, 0]));
}

#[test]
fn stratified_split_keeps_every_image_once_per_class_fraction() {
    let dir = tempfile::tempdir().unwrap();
    // 5 classes of 10, 20, 30, 40, 50 images, each pixel value unique.
    for c in 0..5u8 {
        for i in 0..(10 * (c as usize + 1)) {
            write_png(&dir.path().join(format!("class{c}/{i:02}.png")), [c, i as u8, 0]);
        }
    }
    let ds = ImageFolder::load(dir.path()).unwrap();
    let parts = ds.split(&[0.8, 0.1, 0.1], 7).unwrap();
    let counts: Vec<Vec<usize>> = parts.iter().map(|p| p.class_counts()).collect();
    assert_eq!(counts[0], vec![8, 16, 24, 32, 40]);
    assert_eq!(counts[1], vec![1, 2, 3, 4, 5]);
    assert_eq!(counts[2], vec![1, 2, 3, 4, 5]);
    let mut all: Vec<_> = parts.iter().flat_map(|p| p.paths.clone()).collect();
    all.sort();
    let mut orig = ds.paths.clone();
    orig.sort();
    assert_eq!(all, orig, "every image exactly once");
    for p in &parts {
        for (img, &label) in p.images.iter().zip(&p.labels) {
            assert_eq!(img.get_pixel(0, 0)[0] as u32, label, "labels follow their images");
        }
    }
    // Same seed, same split; another seed, another one.
    assert_eq!(ds.split(&[0.8, 0.1, 0.1], 7).unwrap()[1].paths, parts[1].paths);
    assert_ne!(ds.split(&[0.8, 0.1, 0.1], 8).unwrap()[1].paths, parts[1].paths);
    let err = ds.split(&[0.8, 0.3], 0).err().expect("fractions summing to 1.1").to_string();
    assert!(err.contains("sum to 1"), "{err}");
}

/// `--val-split`: a seeded, stratified hold-out from train; disjoint, nothing lost.
#[test]
fn validation_is_carved_per_class_from_train() {
    let dir = tempfile::tempdir().unwrap();
    for c in 0..3u8 {
        for i in 0..(10 * (c as usize + 1)) {
            write_png(&dir.path().join(format!("class{c}/{i:02}.png")), [c, i as u8, 0]);
        }
    }
    let ds = ImageFolder::load(dir.path()).unwrap();
    let (train, val) = transfer_workbook::data::carve_validation(&ds, 0.2, 5).unwrap();
    assert_eq!(val.class_counts(), vec![2, 4, 6]);
    assert_eq!(train.class_counts(), vec![8, 16, 24]);
    assert!(val.paths.iter().all(|p| !train.paths.contains(p)), "validation photos are not trained on");
    assert_eq!(transfer_workbook::data::carve_validation(&ds, 0.2, 5).unwrap().1.paths, val.paths);
    assert_ne!(transfer_workbook::data::carve_validation(&ds, 0.2, 6).unwrap().1.paths, val.paths);
    for bad in [0.0, 1.0, -0.5, 2.0, f64::NAN] {
        let err = transfer_workbook::data::carve_validation(&ds, bad, 0).err().expect("outside (0, 1)").to_string();
        assert!(err.contains(&format!("--val-split {bad} is outside (0, 1)")), "{err}");
    }
    // 0.04 of 10 photos rounds to none: class0 cannot be split.
    let err = transfer_workbook::data::carve_validation(&ds, 0.04, 0).err().expect("too few").to_string();
    assert!(err.contains("class 'class0'") && err.contains("has 10 photo(s): too few to hold out 0.04"), "{err}");
}

#[test]
fn missing_and_empty_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = ImageFolder::load(&missing).err().unwrap().to_string();
    assert!(err.contains("does not exist") && err.contains("nope"), "{err}");

    let root = dir.path().join("data");
    write_png(&root.join("a/0.png"), [1, 2, 3]);
    std::fs::create_dir_all(root.join("b")).unwrap();
    let err = ImageFolder::load(&root).err().unwrap().to_string();
    assert!(err.contains("has no image files") && err.contains("b"), "{err}");

    // A class whose only image is corrupt has no readable images.
    std::fs::write(root.join("b/bad.png"), b"garbage").unwrap();
    let err = ImageFolder::load(&root).err().unwrap().to_string();
    assert!(err.contains("no readable images"), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = ImageFolder::load(&empty).err().unwrap().to_string();
    assert!(err.contains("no class sub-folders"), "{err}");
}

/// A one-file HTTP/1.1 server on 127.0.0.1 that counts its requests. It stops by itself
/// after `max_requests` connections.
fn serve(body: Vec<u8>, max_requests: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            c.fetch_add(1, Ordering::SeqCst);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/zip\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (format!("http://{addr}/hotdog.zip"), count)
}

fn small_hotdog_zip() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for (path, color) in [("hotdog/train/hotdog/0.png", [200u8, 50, 50]), ("hotdog/train/not-hotdog/0.png", [50, 50, 200])] {
            let mut png = std::io::Cursor::new(Vec::new());
            RgbImage::from_pixel(8, 8, Rgb(color)).write_to(&mut png, image::ImageFormat::Png).unwrap();
            z.start_file(path, opts).unwrap();
            z.write_all(png.get_ref()).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(bytes))
}

#[test]
fn downloader_accepts_the_right_sha1_and_extracts_once() {
    let body = small_hotdog_zip();
    let sha = sha1_hex(&body);
    let (url, count) = serve(body, 4);
    let cache = tempfile::tempdir().unwrap();
    let dir = download_extract(&url, &sha, cache.path()).unwrap();
    assert_eq!(dir, cache.path().join("hotdog"));
    let ds = ImageFolder::load(dir.join("train")).unwrap();
    assert_eq!(ds.classes, vec!["hotdog", "not-hotdog"]);
    assert_eq!(sha1_file(&cache.path().join("hotdog.zip")).unwrap(), sha);
    // Second call: the cached, verified file is used; no new request.
    download_extract(&url, &sha, cache.path()).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn downloader_rejects_a_wrong_sha1_and_keeps_nothing() {
    let body = small_hotdog_zip();
    let good = sha1_hex(&body);
    let (url, _) = serve(body, 2);
    let cache = tempfile::tempdir().unwrap();
    let wrong = "fba480ffa8aa7e0febbb511d181409f899b9baa5";
    let err = download(&url, wrong, cache.path()).unwrap_err().to_string();
    assert!(err.contains(wrong) && err.contains(&good), "error must name both hashes: {err}");
    let left: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert!(left.is_empty(), "a bad download must not be kept: {left:?}");
}
