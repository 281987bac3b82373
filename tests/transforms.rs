//! Transform outputs against pixels computed by hand.

use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use transfer_workbook::transforms::ops::{center_crop, hflip, random_resized_crop_box, resize};
use transfer_workbook::transforms::{sample_rng, Normalization, Pipeline, Step};

fn gradient_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 10) as u8, (y * 10) as u8, 7]))
}

#[test]
fn imagenet_normalization_matches_hand_values() {
    let n = Normalization::imagenet();
    // (v / 255 - mean) / std for v = 255, 0, 128.
    let p = [255u8, 0, 128];
    assert!((n.value(p, 0) - (1.0 - 0.485) / 0.229).abs() < 1e-6);
    assert!((n.value(p, 1) - (0.0 - 0.456) / 0.224).abs() < 1e-6);
    assert!((n.value(p, 2) - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-6);
}

#[test]
fn keras_normalizations_match_hand_values() {
    let p = [10u8, 20, 30];
    // caffe: BGR order, minus the BGR means.
    let c = Normalization::CaffeBgr;
    assert!((c.value(p, 0) - (30.0 - 103.939)).abs() < 1e-4);
    assert!((c.value(p, 1) - (20.0 - 116.779)).abs() < 1e-4);
    assert!((c.value(p, 2) - (10.0 - 123.68)).abs() < 1e-4);
    let t = Normalization::MinusOneOne;
    assert_eq!(t.value([0, 255, 0], 0), -1.0);
    assert_eq!(t.value([0, 255, 0], 1), 1.0);
    for n in [Normalization::imagenet(), c, t, Normalization::Unit] {
        let back = n.invert([n.value(p, 0), n.value(p, 1), n.value(p, 2)]);
        assert_eq!(back, p, "{n:?} does not invert");
    }
}

#[test]
fn to_chw_is_channel_first() {
    let img = gradient_image(3, 2);
    let v = Normalization::Unit.to_chw(&img);
    assert_eq!(v.len(), 18);
    // Channel 0 is x*10/255 in row-major order, channel 1 is y*10/255, channel 2 is 7/255.
    assert_eq!(v[0..6], [0.0, 10.0, 20.0, 0.0, 10.0, 20.0].map(|x: f32| x / 255.0));
    assert_eq!(v[6..12], [0.0, 0.0, 0.0, 10.0, 10.0, 10.0].map(|x: f32| x / 255.0));
    assert!(v[12..].iter().all(|&x| x == 7.0 / 255.0));
}

#[test]
fn center_crop_takes_the_middle() {
    let img = gradient_image(10, 8);
    let c = center_crop(&img, 4, 6);
    assert_eq!(c.dimensions(), (6, 4));
    // Offsets: left = round((10 - 6) / 2) = 2, top = round((8 - 4) / 2) = 2.
    assert_eq!(c.get_pixel(0, 0), &Rgb([20, 20, 7]));
    assert_eq!(c.get_pixel(5, 3), &Rgb([70, 50, 7]));
}

#[test]
fn hflip_mirrors_columns() {
    let img = gradient_image(4, 1);
    let f = hflip(&img);
    assert_eq!(f.get_pixel(0, 0), &Rgb([30, 0, 7]));
    assert_eq!(f.get_pixel(3, 0), &Rgb([0, 0, 7]));
}

#[test]
fn bilinear_halving_uses_pillow_weights() {
    // Downscaling by 2 with an antialiased triangle filter: each output pixel covers 4 inputs
    // with weights 1/8, 3/8, 3/8, 1/8 (edges renormalised). One row of 8 pixels, values 0..7*32.
    let img = RgbImage::from_fn(8, 1, |x, _| Rgb([(x * 32) as u8, 100, 0]));
    let r = resize(&img, 1, 4).unwrap();
    let v: Vec<u8> = (0..4).map(|x| r.get_pixel(x, 0)[0]).collect();
    // Middle outputs: x=1 covers inputs 1..=4: (32*1 + 64*3 + 96*3 + 128*1)/8 = 80.
    assert_eq!(v[1], 80);
    assert_eq!(v[2], 144);
    // Left edge: inputs 0..=2 with weights 3/8, 3/8, 1/8 renormalised by 7/8: (0*3 + 32*3 + 64)/7 = 22.86.
    assert_eq!(v[0], 23);
    // Constant channels stay constant.
    assert!((0..4).all(|x| r.get_pixel(x, 0)[1] == 100));
}

#[test]
fn random_resized_crop_box_is_valid_and_seeded() {
    let mut a = ChaCha8Rng::seed_from_u64(7);
    let mut b = ChaCha8Rng::seed_from_u64(7);
    for _ in 0..200 {
        let ba = random_resized_crop_box(&mut a, 300, 200, (0.08, 1.0), (0.75, 4.0 / 3.0));
        let bb = random_resized_crop_box(&mut b, 300, 200, (0.08, 1.0), (0.75, 4.0 / 3.0));
        assert_eq!(ba, bb);
        assert!(ba.left + ba.width <= 300 && ba.top + ba.height <= 200);
        assert!(ba.width > 0 && ba.height > 0);
    }
}

#[test]
fn random_resized_crop_falls_back_to_clamped_center_crop() {
    // Aspect ratio 2 is impossible at full area of a square image: all 10 tries fail, and the
    // fallback keeps the full width with height round(100 / 2) = 50, centred.
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let b = random_resized_crop_box(&mut rng, 100, 100, (1.0, 1.0), (2.0, 2.0));
    assert_eq!((b.left, b.top, b.width, b.height), (0, 25, 100, 50));
}

#[test]
fn pipelines_have_the_d2l_shapes_and_are_reproducible() {
    let img = gradient_image(25, 20);
    let train = Pipeline::d2l_train(16, Normalization::imagenet());
    let x1 = train.apply(&img, &mut sample_rng(1, 2, 3)).unwrap();
    let x2 = train.apply(&img, &mut sample_rng(1, 2, 3)).unwrap();
    let x3 = train.apply(&img, &mut sample_rng(1, 2, 4)).unwrap();
    assert_eq!(x1.len(), 3 * 16 * 16);
    assert_eq!(x1, x2);
    assert_ne!(x1, x3);
    let test = Pipeline::d2l_test(224, Normalization::imagenet());
    assert_eq!(test.steps, vec![Step::Resize { height: 256, width: 256 }, Step::CenterCrop { size: 224 }]);
    let keras = Pipeline::keras_train(224, Normalization::CaffeBgr);
    assert_eq!(keras.output_size(), Some(224));
    let y = keras.apply(&gradient_image(300, 280), &mut sample_rng(0, 0, 0)).unwrap();
    assert_eq!(y.len(), 3 * 224 * 224);
}

#[test]
fn random_crop_rejects_a_too_small_image() {
    let err = Step::RandomCrop { size: 50 }.apply(&gradient_image(20, 20), &mut sample_rng(0, 0, 0)).unwrap_err();
    assert!(err.to_string().contains("larger than the 20x20 image"), "{err}");
}
