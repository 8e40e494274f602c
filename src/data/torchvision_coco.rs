//! torchvision's COCO category list, so that torchvision's COCO-trained detectors name their
//! boxes without the COCO annotation files. torchvision's detection models predict 91 classes:
//! index 0 is the background and index `l` is COCO category id `l`; the ten ids COCO never used
//! are `N/A` (torchvision's `_COCO_CATEGORIES`, in `torchvision/models/_meta.py`).

/// Index = torchvision label = COCO category id (0: background).
pub const CATEGORIES: [&str; 91] = [
    "__background__",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// Foreground class names and category ids in kdet's label order (label `l` is
/// `names[l - 1]`, category id `l`): 90 classes, as torchvision's COCO weights are built.
pub fn classes() -> (Vec<String>, Vec<u64>) {
    let names = CATEGORIES[1..].iter().map(|s| s.to_string()).collect();
    let ids = (1..CATEGORIES.len() as u64).collect();
    (names, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ninety_one_indices_with_the_coco_gaps() {
        let (names, ids) = classes();
        assert_eq!((names.len(), ids.len()), (90, 90));
        let gaps: Vec<u64> = ids
            .iter()
            .zip(&names)
            .filter(|(_, n)| *n == "N/A")
            .map(|(i, _)| *i)
            .collect();
        // The ids COCO 2017's instances files skip.
        assert_eq!(gaps, vec![12, 26, 29, 30, 45, 66, 68, 69, 71, 83]);
        let mut real: Vec<&String> = names.iter().filter(|n| *n != "N/A").collect();
        assert_eq!(real.len(), 80);
        real.sort();
        real.dedup();
        assert_eq!(real.len(), 80);
        assert_eq!(
            (names[0].as_str(), names[89].as_str()),
            ("person", "toothbrush")
        );
        assert_eq!(names[ids.iter().position(|i| *i == 72).unwrap()], "tv");
    }
}
