"""Metrics against small hand-computed cases.

Most cases give clip logits as ``log(p)``, so each clip's softmax is the probability row ``p``
written in the test and every expected value below can be checked by hand.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from hmdbattn.engine.metrics import (
    ClassAccuracy,
    clip_accuracy,
    compute_metrics,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    summarise_splits,
    video_accuracy,
    video_mean_probs,
    video_vote_accuracy,
    vote_predictions,
    write_confusion_csv,
    write_confusion_png,
)

NAMES = ["a", "b", "c"]

# 4 videos, 9 clips, 3 classes; softmax of each clip, its argmax and whether it is right.
PROBS = [
    # video 0, true a
    [0.7, 0.2, 0.1],  # clip 0: a, right
    [0.1, 0.5, 0.4],  # clip 1: b, wrong; a is ranked last, so wrong in top-2 as well
    [0.6, 0.3, 0.1],  # clip 2: a, right
    # video 1, true b
    [0.1, 0.4, 0.5],  # clip 3: c, wrong (b second)
    [0.1, 0.8, 0.1],  # clip 4: b, right
    # video 2, true c
    [0.5, 0.1, 0.4],  # clip 5: a, wrong (c second)
    [0.45, 0.15, 0.4],  # clip 6: a, wrong (c second)
    [0.05, 0.05, 0.9],  # clip 7: c, right
    # video 3, true a
    [0.2, 0.5, 0.3],  # clip 8: b, wrong; a is ranked last
]
CLIP_VIDEO = [0, 0, 0, 1, 1, 2, 2, 2, 3]
LABELS = [0, 1, 2, 0]
# Votes and mean softmax per video:
#   video 0: votes a2 b1      -> a (right); mean (1.4, 1.0, 0.6)/3 = (.467, .333, .2)  -> a (right)
#   video 1: votes b1 c1, tie; mean (0.2, 1.2, 0.6)/2 = (.1, .6, .3) -> vote b (right), mean b
#   video 2: votes a2 c1      -> a (wrong); mean (1.0, 0.3, 1.7)/3 = (.333, .1, .567)  -> c (right)
#   video 3: votes b1         -> b (wrong); mean (.2, .5, .3)                          -> b (wrong)
MEAN_PROBS = [
    [1.4 / 3, 1.0 / 3, 0.6 / 3],
    [0.1, 0.6, 0.3],
    [1.0 / 3, 0.1, 1.7 / 3],
    [0.2, 0.5, 0.3],
]


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(PROBS).log(), torch.tensor(CLIP_VIDEO), torch.tensor(LABELS)


def test_clip_accuracy_top1_top2_and_clamped_top5() -> None:
    logits, videos, labels = inputs()
    assert clip_accuracy(logits, videos, labels) == 4 / 9  # clips 0, 2, 4, 7
    assert clip_accuracy(logits, videos, labels, k=2) == 7 / 9  # all but clips 1 and 8
    assert clip_accuracy(logits, videos, labels, k=5) == 1.0  # k clamped to K = 3


def test_video_mean_probs_averages_softmax_per_video() -> None:
    logits, videos, _ = inputs()
    means = video_mean_probs(logits, videos, num_videos=4)
    assert means.shape == (4, 3)
    assert torch.allclose(means, torch.tensor(MEAN_PROBS, dtype=torch.float64), atol=1e-6)


def test_video_vote_accuracy_follows_the_votes_not_the_mean() -> None:
    logits, videos, labels = inputs()
    assert vote_predictions(logits, videos, num_videos=4).tolist() == [0, 1, 0, 1]
    assert video_vote_accuracy(logits, videos, labels) == 2 / 4  # videos 0 and 1


def test_video_accuracy_by_mean_softmax() -> None:
    logits, videos, labels = inputs()
    assert video_accuracy(logits, videos, labels) == 3 / 4  # all but video 3
    # video 3's true class a has the lowest mean probability, so top-2 does not help it
    assert video_accuracy(logits, videos, labels, k=2) == 3 / 4
    assert video_accuracy(logits, videos, labels, k=5) == 1.0  # k clamped to K = 3


def test_vote_tie_goes_to_highest_mean_softmax() -> None:
    # one vote each for c (confidently) and b (barely): c has the higher mean probability,
    # although b has the lower index
    probs = torch.tensor([[0.05, 0.05, 0.9], [0.3, 0.4, 0.3]])
    # mean (0.175, 0.225, 0.6) -> c
    assert vote_predictions(probs.log(), torch.tensor([0, 0]), num_videos=1).tolist() == [2]


def test_vote_tie_then_mean_tie_goes_to_lowest_index() -> None:
    # one vote each for c and b with mirrored logits: exp(-50) is below float64's resolution
    # around 1, so the softmaxes are exactly (tiny, tiny, 1) and (tiny, 1, tiny) and the mean
    # probabilities of b and c are both exactly 0.5: the lower index, b, wins
    logits = torch.tensor([[-50.0, -50.0, 0.0], [-50.0, 0.0, -50.0]])
    assert vote_predictions(logits, torch.tensor([0, 0]), num_videos=1).tolist() == [1]


def test_vote_leaders_only_compete_on_mean_softmax() -> None:
    # votes a2 c1: a wins the vote although c has the higher mean probability (0.6 vs 0.4)
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [0.0001, 0.0001, 0.9998]])
    assert vote_predictions(probs.log(), torch.tensor([0, 0, 0]), num_videos=1).tolist() == [0]


def test_equal_logits_rank_lower_index_first() -> None:
    logits = torch.zeros(1, 3)
    video, label = torch.tensor([0]), torch.tensor([1])
    assert clip_accuracy(logits, video, label) == 0.0  # argmax takes class 0
    assert clip_accuracy(logits, video, label, k=2) == 1.0  # class 1 is second
    assert clip_accuracy(logits, video, torch.tensor([2]), k=2) == 0.0  # class 2 is third


def test_per_class_accuracy_and_absent_class() -> None:
    predictions, labels = torch.tensor([0, 1, 2, 2, 3]), torch.tensor([0, 0, 2, 2, 2])
    assert per_class_accuracy(predictions, labels, ["w", "x", "y", "z"]) == [
        ClassAccuracy("w", videos=2, correct=1, accuracy=0.5),
        ClassAccuracy("x", videos=0, correct=0, accuracy=None),
        ClassAccuracy("y", videos=3, correct=2, accuracy=2 / 3),
        ClassAccuracy("z", videos=0, correct=0, accuracy=None),
    ]


def test_mean_class_accuracy_leaves_out_absent_classes() -> None:
    predictions, labels = torch.tensor([0, 1, 2, 2, 3]), torch.tensor([0, 0, 2, 2, 2])
    # classes 1 and 3 have no videos: (1/2 + 2/3) / 2 = 7/12, not (1/2 + 2/3) / 4
    assert mean_class_accuracy(predictions, labels, num_classes=4) == pytest.approx(
        7 / 12, abs=1e-12
    )


def test_confusion_matrix_rows_true_columns_predicted() -> None:
    predictions, labels = torch.tensor([0, 1, 2, 2, 0, 1]), torch.tensor([0, 0, 2, 2, 1, 1])
    assert confusion_matrix(predictions, labels, num_classes=3).tolist() == [
        [1, 1, 0],
        [1, 1, 0],
        [0, 0, 2],
    ]


def test_compute_metrics_bundles_every_metric() -> None:
    logits, videos, labels = inputs()
    metrics = compute_metrics(logits, videos, labels, NAMES)
    assert metrics.scalars() == {
        "clip_top1": 4 / 9,
        "clip_top5": 1.0,
        "video_vote_top1": 2 / 4,
        "video_top1": 3 / 4,
        "video_top5": 1.0,
        "mean_class_accuracy": pytest.approx((1 / 2 + 1 + 1) / 3, abs=1e-12),  # a 1/2, b 1, c 1
    }
    assert (metrics.num_clips, metrics.num_videos) == (9, 4)
    # mean-softmax predictions a, b, c, b against true a, b, c, a
    assert metrics.confusion == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert [(c.name, c.videos, c.correct) for c in metrics.per_class] == [
        ("a", 2, 1),
        ("b", 1, 1),
        ("c", 1, 1),
    ]


def test_to_dict_is_plain_json() -> None:
    logits, videos, labels = inputs()
    data = compute_metrics(logits, videos, labels, NAMES).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["per_class"][0] == {"name": "a", "videos": 2, "correct": 1, "accuracy": 0.5}
    assert data["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert data["class_names"] == NAMES
    assert type(data["video_top1"]) is float and type(data["num_clips"]) is int


def test_logits_on_any_dtype_give_the_same_results() -> None:
    logits, videos, labels = inputs()
    half = compute_metrics(logits.bfloat16(), videos.int(), labels.int(), NAMES)
    assert half.video_top1 == 3 / 4 and half.video_vote_top1 == 2 / 4


@pytest.mark.parametrize(
    ("clip_video", "video_labels", "names", "message"),
    [
        ([0, 0, 0, 1, 1, 2, 2, 2, 2], LABELS, NAMES, "1 of 4 videos have no clips"),
        ([0, 0, 0, 1, 1, 2, 2, 2, 4], LABELS, NAMES, "clip_video values"),
        (CLIP_VIDEO, [0, 1, 3, 0], NAMES, "video_labels values"),
        (CLIP_VIDEO[:-1], LABELS, NAMES, "clip_video must be"),
        (CLIP_VIDEO, LABELS, ["a", "b"], "2 class names for 3 logit columns"),
    ],
)
def test_bad_inputs_are_refused(
    clip_video: list[int], video_labels: list[int], names: list[str], message: str
) -> None:
    logits = torch.tensor(PROBS).log()
    with pytest.raises(ValueError, match=message):
        compute_metrics(logits, torch.tensor(clip_video), torch.tensor(video_labels), names)


def test_summarise_splits_mean_and_sample_std() -> None:
    results = [
        {"video_top1": 0.5, "clip_top1": 0.25},
        {"video_top1": 0.6, "clip_top1": 0.25},
        {"video_top1": 0.7, "clip_top1": 0.25},
    ]
    summary = summarise_splits(results)
    assert list(summary) == ["video_top1", "clip_top1"]
    mean, std = summary["video_top1"]
    # deviations -0.1, 0, 0.1: sum of squares 0.02, / (3 - 1) = 0.01, sqrt = 0.1
    assert mean == pytest.approx(0.6, abs=1e-12) and std == pytest.approx(0.1, abs=1e-12)
    assert summary["clip_top1"] == (0.25, 0.0)


def test_summarise_splits_one_split_and_bad_input() -> None:
    assert summarise_splits([{"video_top1": 0.5}]) == {"video_top1": (0.5, 0.0)}
    with pytest.raises(ValueError, match="no results"):
        summarise_splits([])
    with pytest.raises(ValueError, match="result 2 has metrics"):
        summarise_splits([{"video_top1": 0.5}, {"clip_top1": 0.5}])


def test_write_confusion_csv(tmp_path) -> None:
    path = tmp_path / "out" / "confusion.csv"
    path.parent.mkdir()
    path.write_text("old")
    write_confusion_csv(path, torch.tensor([[3, 1], [0, 2]]), ["run", "walk, fast"])
    with path.open(newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows == [
        ["true/predicted", "run", "walk, fast"],
        ["run", "3", "1"],
        ["walk, fast", "0", "2"],
    ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.csv"]  # no temp file left


def test_write_confusion_csv_refuses_wrong_shape(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"must be \(3, 3\)"):
        write_confusion_csv(tmp_path / "c.csv", [[1, 0], [0, 1]], NAMES)
    assert list(tmp_path.iterdir()) == []


def test_write_confusion_png_small_matrix(tmp_path) -> None:
    path = tmp_path / "confusion.png"
    write_confusion_png(path, [[4, 0, 0], [1, 3, 0], [0, 0, 0]], NAMES)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        width, height = image.size
        colours = {colour for _, colour in image.getcolors(maxcolors=100_000) or []}
    # three 28 px cells plus margins for names and captions
    assert 3 * 28 < width < 3 * 28 + 200 and 3 * 28 < height < 3 * 28 + 200
    assert (8, 48, 107) in colours  # a full row share (4 of 4) is the darkest shade
    assert (255, 255, 255) in colours
    assert list(tmp_path.iterdir()) == [path]


def test_write_confusion_png_51_classes_is_legible_size(tmp_path) -> None:
    names = [f"class_name_{i:02d}" for i in range(51)]
    matrix = torch.eye(51, dtype=torch.long) * 3
    path = tmp_path / "confusion.png"
    write_confusion_png(path, matrix, names)
    with Image.open(path) as image:
        width, height = image.size
        image.verify()
    # 16 px cells plus room for the names on both axes
    assert 51 * 16 + 50 < width < 51 * 16 + 250 and 51 * 16 + 50 < height < 51 * 16 + 250
    assert math.isclose(width, height, abs_tol=40)
