//! ImageNet-1k class names (WordNet lemmas, class order of the pretrained heads).

/// Class 934, the d2l chapter's "hotdog" row.
pub const HOTDOG_CLASS: usize = 934;

static CLASSES: &str = include_str!("../../assets/imagenet_classes.txt");

/// The 1000 class names, `CLASSES[934] == "hotdog, hot dog, red hot"`.
pub fn class_names() -> Vec<String> {
    CLASSES.lines().map(str::to_string).collect()
}
