"""characterize.png's fixed layout (no layout engine): nothing leaves the figure or overlaps."""
import itertools

import pytest
from test_characterize_output import fake_result

pytest.importorskip("matplotlib")


@pytest.mark.parametrize("num_images,card", [(7, None), (12, {"status": "placeholder"}),
                                              (30, None)])
def test_every_panel_with_its_titles_and_labels_fits_the_figure_without_overlap(num_images,
                                                                                 card):
    from hagg_tf.estimation import characterization_figure

    result = fake_result(num_images=num_images, **({} if card is None else {"card": card}))
    figure = characterization_figure(result)
    assert figure.get_layout_engine() is None  # the layout costs no text measuring passes
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas_agg = FigureCanvasAgg(figure)  # the canvas savefig(".png") draws on
    canvas_agg.draw()
    renderer = canvas_agg.get_renderer()
    canvas = figure.bbox
    boxes = [axis.get_tightbbox(renderer) for axis in figure.get_axes()]  # titles, labels, ticks
    assert figure.get_suptitle() and len(figure.texts) == 2  # θ̂'s title, the sheet's title
    texts = [text.get_window_extent(renderer) for text in figure.texts]
    for box in boxes + texts:
        assert (box.x0 >= canvas.x0 - 1 and box.y0 >= canvas.y0 - 1
                and box.x1 <= canvas.x1 + 1 and box.y1 <= canvas.y1 + 1), (box, canvas)
    for first, second in itertools.combinations(boxes + texts, 2):
        overlap_x = min(first.x1, second.x1) - max(first.x0, second.x0)
        overlap_y = min(first.y1, second.y1) - max(first.y0, second.y0)
        assert overlap_x <= 1 or overlap_y <= 1, (first, second)
