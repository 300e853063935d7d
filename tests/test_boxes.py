import pytest

from vlm_recipes.boxes import (
    format_answer,
    is_empty_answer,
    openfoodfacts_to_xyxy,
    parse_answer,
    reading_order,
    resized_size,
    validate_box,
    xyxy_to_openfoodfacts,
)
from vlm_recipes.errors import InputError
from vlm_recipes.families import get_family

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
Q2, Q25, Q3 = (get_family(n) for n in FAMILIES)


# --- OpenFoodFacts ---------------------------------------------------------------------

def test_openfoodfacts_is_y_then_x():
    # 1000 wide, 500 high: y values scale by 500, x values by 1000
    assert openfoodfacts_to_xyxy([0.1, 0.2, 0.5, 0.6], 1000, 500) == pytest.approx((200, 50, 600, 250))


def test_openfoodfacts_inverse():
    assert xyxy_to_openfoodfacts((200, 50, 600, 250), 1000, 500) == pytest.approx((0.1, 0.2, 0.5, 0.6))


# --- validation ------------------------------------------------------------------------

def test_validate_box_accepts_box_inside_and_rounding_overshoot():
    validate_box((0, 0, 640, 480), 640, 480, "sample 1 of train")
    validate_box((-0.5, 0, 640.9, 480.5), 640, 480, "sample 1 of train")


def test_validate_box_outside_names_sample_and_image():
    with pytest.raises(InputError) as err:
        validate_box((10, 10, 700, 100), 640, 480, "sample 12 of train")
    msg = str(err.value)
    assert msg == ("box (10, 10, 700, 100) of sample 12 of train lies outside its 640x480 image: "
                   "fix the annotation or drop the sample")
    assert "\n" not in msg


@pytest.mark.parametrize("box", [(10, 10, 10, 50), (50, 10, 10, 50), (10, 50, 60, 20)])
def test_validate_box_rejects_zero_or_negative_area(box):
    with pytest.raises(InputError, match="sample 3 of val has zero or negative area"):
        validate_box(box, 640, 480, "sample 3 of val")


def test_validate_box_rejects_nan():
    with pytest.raises(InputError, match="non-finite"):
        validate_box((float("nan"), 0, 10, 10), 640, 480, "sample 0 of train")


# --- resized size ----------------------------------------------------------------------

def test_resized_size_hand_computed():
    # factor 28: 500/28 = 17.9 -> 18*28 = 504, 1000/28 = 35.7 -> 36*28 = 1008
    assert resized_size(1000, 500, Q25) == (1008, 504)
    assert resized_size(1000, 500, Q2) == (1008, 504)
    # factor 32: 500/32 = 15.6 -> 512, 1000/32 = 31.25 -> 992
    assert resized_size(1000, 500, Q3) == (992, 512)
    # over max_pixels: scaled by sqrt(500000/200704) then floored to the factor
    assert resized_size(1000, 500, Q25, max_pixels=256 * 28 * 28) == (616, 308)


def test_resized_size_extreme_aspect_ratio_is_input_error():
    with pytest.raises(InputError, match="10x2500"):
        resized_size(10, 2500, Q25)


# --- formatting ------------------------------------------------------------------------

BOX = ("nutrition-table", (200.0, 50.0, 600.0, 250.0))  # on a 1000x500 image


def test_format_qwen2_vl():
    text = format_answer([BOX, ("x", (0, 0, 1000, 500))], 1000, 500, Q2, (1008, 504))
    assert text == ("<|object_ref_start|>nutrition-table<|object_ref_end|>"
                    "<|box_start|>(200,100),(600,500)<|box_end|>"
                    "<|object_ref_start|>x<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|>")


def test_format_qwen2_5_vl_uses_resized_pixels():
    # x scales by 1008/1000, y by 504/500: 201.6 -> 202, 50.4 -> 50, 604.8 -> 605, 252
    text = format_answer([BOX], 1000, 500, Q25, (1008, 504))
    assert text == '[{"bbox_2d": [202, 50, 605, 252], "label": "nutrition-table"}]'


def test_format_qwen3_vl_uses_1000_grid():
    text = format_answer([BOX], 1000, 500, Q3, (992, 512))
    assert text == '[{"bbox_2d": [200, 100, 600, 500], "label": "nutrition-table"}]'


def test_format_clamps_to_grid():
    text = format_answer([("a", (-3, -3, 1002, 501))], 1000, 500, Q3, (992, 512))
    assert text == '[{"bbox_2d": [0, 0, 1000, 1000], "label": "a"}]'


# --- round trips -----------------------------------------------------------------------

SIZES = [(640, 480), (1000, 500), (333, 777), (4032, 3024), (97, 61)]
# boxes as fractions of the image, so they fit every size
FRACTIONS = [(0.0, 0.0, 1.0, 1.0), (0.1234, 0.5678, 0.4321, 0.8765), (0.5, 0.01, 0.51, 0.99)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_round_trip(family, size):
    fam = get_family(family)
    w, h = size
    resized = resized_size(w, h, fam, max_pixels=512 * 28 * 28)
    boxes = [(f"obj {i}", (fx1 * w, fy1 * h, fx2 * w, fy2 * h))
             for i, (fx1, fy1, fx2, fy2) in enumerate(FRACTIONS)]
    parsed = parse_answer(format_answer(boxes, w, h, fam, resized), w, h, fam, resized)

    # one grid step, in original pixels
    if fam.box_format == "json_abs_resized":
        step_x, step_y = w / resized[0], h / resized[1]
    else:
        step_x, step_y = w / 1000, h / 1000
    assert [label for label, _ in parsed] == [label for label, _ in boxes]
    for (_, got), (_, want) in zip(parsed, boxes):
        for i, (g, t) in enumerate(zip(got, want)):
            assert abs(g - t) <= (step_x if i % 2 == 0 else step_y)


def test_round_trip_really_resizes():
    # guard: the sizes above include ones smart_resize changes
    assert resized_size(4032, 3024, Q25, max_pixels=512 * 28 * 28) != (4032, 3024)
    assert resized_size(333, 777, Q3) != (333, 777)


# --- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", [
    "",
    "   ",
    "I cannot find a nutrition table in this image.",
    '[{"bbox_2d": [200, 100, 60',
    '<|object_ref_start|>x<|object_ref_end|><|box_start|>(200,100),(60',
    '[{"box": [200, 100, 600, 500], "label": "x"}]',
    '[{"bbox_2d": [200, 100, 600], "label": "x"}]',
    '[{"bbox_2d": ["a", 100, 600, 500], "label": "x"}]',
    '[{"bbox_2d": [NaN, 100, 600, 500], "label": "x"}]',
    '{"bbox_2d": [1e999, 100, 600, 500]}',
    "[" * 5000,
    "(1,2)",
])
def test_malformed_answers_give_empty_list(family, text):
    assert parse_answer(text, 1000, 500, get_family(family), (1008, 504)) == []


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_parse_fenced_json_with_prose(family):
    fam = get_family(family)
    resized = (1000, 1000)  # makes both JSON families' coordinates mean the same
    text = ('Sure, here it is:\n```json\n[\n\t{"bbox_2d": [200, 100, 600, 500], '
            '"label": "nutrition-table"}\n]\n```\nAnything else?')
    assert parse_answer(text, 1000, 500, fam, resized) == [("nutrition-table", (200.0, 50.0, 600.0, 250.0))]


def test_parse_missing_label_swapped_corners_and_clamping():
    text = 'Found: {"bbox_2d": [600, 500, 200, 100]} and [{"bbox_2d": [1, 1, 2, 2]}]'
    # the first JSON value with a box wins; label missing -> ""
    assert parse_answer(text, 1000, 500, Q3, (992, 512)) == [("", (200.0, 50.0, 600.0, 250.0))]
    text = '[{"bbox_2d": [-10, 0, 1200, 500], "label": 7}]'
    assert parse_answer(text, 1000, 500, Q3, (992, 512)) == [("", (0.0, 0.0, 1000.0, 250.0))]


def test_parse_qwen2_5_vl_clamps_to_resized_image():
    text = '[{"bbox_2d": [0, 0, 2000, 504], "label": "a"}]'
    assert parse_answer(text, 1000, 500, Q25, (1008, 504)) == [("a", (0.0, 0.0, 1000.0, 500.0))]


def test_parse_truncated_list_keeps_complete_objects():
    text = '[{"bbox_2d": [200, 100, 600, 500], "label": "a"}, {"bbox_2d": [1, 2'
    assert parse_answer(text, 1000, 500, Q3, (992, 512)) == [("a", (200.0, 50.0, 600.0, 250.0))]


def test_parse_qwen2_vl_tolerant():
    want = (200.0, 50.0, 600.0, 250.0)
    # spaces, surrounding text, swapped corners
    text = "The table is <|object_ref_start|> table <|object_ref_end|><|box_start|>( 600 , 500 ),(200,100)<|box_end|>."
    assert parse_answer(text, 1000, 500, Q2, (1008, 504)) == [("table", want)]
    # decoded with skip_special_tokens=True: the markers are gone, the label with them
    assert parse_answer("table(200,100),(600,500)", 1000, 500, Q2, (1008, 504)) == [("", want)]
    # box without a label
    assert parse_answer("<|box_start|>(200,100),(600,500)<|box_end|>", 1000, 500, Q2, (1008, 504)) == [("", want)]


# --- several objects and none (D29) ------------------------------------------------------

TWO = [("b", (100.0, 120.0, 150.0, 160.0)), ("a", (10.0, 20.0, 60.0, 50.0))]  # given bottom first


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_answer_round_trip(name):
    family = get_family(name)
    resized = resized_size(640, 480, family)
    text = format_answer([], 640, 480, family, resized)
    assert text == ("None" if name == "qwen2_vl" else "[]")
    assert parse_answer(text, 640, 480, family, resized) == []
    assert is_empty_answer(text, family) and is_empty_answer(f" {text}\n", family)


@pytest.mark.parametrize("name", FAMILIES)
def test_unreadable_or_boxed_answers_are_not_the_empty_answer(name):
    family = get_family(name)
    resized = resized_size(640, 480, family)
    assert not is_empty_answer("the table is missing", family)
    assert not is_empty_answer(format_answer(TWO, 640, 480, family, resized), family)


@pytest.mark.parametrize("name", FAMILIES)
def test_several_boxes_round_trip_in_reading_order(name):
    family = get_family(name)
    resized = resized_size(640, 480, family)
    text = format_answer(reading_order(TWO), 640, 480, family, resized)
    parsed = parse_answer(text, 640, 480, family, resized)
    assert [label for label, _ in parsed] == ["a", "b"]  # top first, whatever order they were given in
    for (_, got), (_, want) in zip(parsed, sorted(TWO, key=lambda o: o[1][1])):
        assert got == pytest.approx(want, abs=640 / 1000 + 1)  # one grid step


def test_reading_order_is_top_then_left_and_stable():
    boxes = [("c", (50.0, 10.0, 60.0, 20.0)), ("b", (5.0, 10.0, 9.0, 20.0)), ("a", (70.0, 0.0, 80.0, 5.0)),
             ("d", (5.0, 10.0, 8.0, 30.0))]
    assert [label for label, _ in reading_order(boxes)] == ["a", "b", "d", "c"]


def test_qwen2_vl_answer_lists_every_pair():
    resized = resized_size(1000, 1000, Q2)
    text = format_answer(reading_order(TWO), 1000, 1000, Q2, resized)
    assert text == ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(10,20),(60,50)<|box_end|>"
                    "<|object_ref_start|>b<|object_ref_end|><|box_start|>(100,120),(150,160)<|box_end|>")
