"""One protocol, one leaderboard: rows, Markdown table, JSON round trip, protocol mismatch refused."""
import json

import pytest
import torch

from diffedu import metrics
from diffedu.nets import DigitClassifier


@pytest.fixture(scope="module")
def evaluator():
    torch.manual_seed(0)
    net = metrics.FeatureNet(DigitClassifier(1, 10, width=4, feature_dim=8), name="Tiny")
    real = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return metrics.ImageEvaluator(net, real, n=40, k=3, kid_subsets=5)


def test_rows_table_and_round_trip(evaluator, tmp_path):
    path = tmp_path / "board.json"
    board = metrics.Leaderboard(evaluator, path=str(path))
    g = torch.Generator().manual_seed(1)
    real_like = torch.rand(40, 1, 8, 8, generator=g) * 2 - 1
    row = board.add("uniform noise", real_like, nfe=1, train_s=0.0, sample_s=0.4)
    assert row["sample_ms_per_image"] == pytest.approx(10.0)
    board.add("constant", torch.zeros(40, 1, 8, 8), nfe=1)
    board.add("constant", torch.zeros(40, 1, 8, 8) + 0.1, nfe=2)  # same name: replaced
    assert [r["name"] for r in board.rows] == ["uniform noise", "constant"]
    assert board.best("FD")["name"] == "uniform noise"
    table = board.table()
    assert "FD_Tiny" in table and "| uniform noise |" in table and "N = 40" in table
    again = metrics.Leaderboard(evaluator, path=str(path))
    assert again.rows == json.loads(path.read_text())["rows"] == board.rows


def test_protocol_mismatch_and_bad_samples(evaluator, tmp_path):
    path = tmp_path / "board.json"
    metrics.Leaderboard(evaluator).save(str(path))
    other = metrics.ImageEvaluator(evaluator.feature_net, torch.zeros(60, 1, 8, 8), n=50, k=3)
    with pytest.raises(ValueError, match="not comparable"):
        metrics.Leaderboard(other, path=str(path))
    with pytest.raises(ValueError, match="exactly n=40"):
        evaluator(torch.zeros(39, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        evaluator(torch.full((40, 1, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="feature_net"):
        metrics.ImageEvaluator(torch.nn.Identity(), torch.zeros(60, 1, 8, 8))
