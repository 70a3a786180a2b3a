"""PatchCore: coreset, patch embedding, nearest-neighbour map, reweighting, checkpoint, end to end.

Known answers are worked out by hand (coreset on a line, reweighting on a 2-D bank) or by brute
force in float64 (distances); the embedding is checked against a literal transcription of the
official code's sequence of operations (unfold, resize the unfolded patches, adaptive pooling).
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anomaly_bench.models.components.blur import gaussian_blur
from anomaly_bench.models.components.coreset import (
    coreset_size,
    greedy_coreset,
    greedy_coreset_indices,
    projection_matrix,
)
from anomaly_bench.models.patchcore import PatchCore, PatchCoreModel
from anomaly_bench.models.patchcore.embedding import LocallyAwarePatchEmbedding, adaptive_pool_taps
from anomaly_bench.models.patchcore.scoring import nearest_neighbours, reweighted_image_scores

TINY = {"backbone": "tiny", "layers": (1, 2), "pretrained": False, "pretrain_embed_dim": 32, "embed_dim": 16}


pytestmark = pytest.mark.usefixtures("single_thread")


def quiet_trainer(**kwargs) -> L.Trainer:
    args = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
            "enable_model_summary": False}
    args.update(kwargs)
    return L.Trainer(**args)


def no_callbacks(model: PatchCore) -> PatchCore:
    model.configure_callbacks = list  # the model alone, not the Evaluator / visualiser
    return model


def min_distance_to(points: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    return torch.cdist(points.double(), points[chosen].double()).amin(1)


# ----------------------------------------------------------------------------------- coreset
def test_coreset_on_a_line_known_answer():
    # x = 0, 1, 2, 10, 11, 20, every point a start: running distances begin at each point's mean
    # distance to all six: 7.33, 6.67, 6.33, 6.33, 6.67, 12.67. Then, by hand:
    #   pick 20 (12.67); distances to 20 are all larger, nothing changes;
    #   pick 0 (7.33); running -> 1: 1, 2: 2, 10: 6.33, 11: 6.67;
    #   pick 11 (6.67); running -> 1: 1, 2: 2, 10: 1;
    #   pick 2 (2).
    x = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 20.0])
    points = torch.stack([x, torch.zeros_like(x)], 1)
    picks = greedy_coreset_indices(points, 4, init="mean_distance", init_points=6,
                                   generator=torch.Generator().manual_seed(0))
    assert picks.tolist() == [5, 0, 4, 2]


@pytest.mark.parametrize("projection_dim", [None, 4])
def test_coreset_picks_the_farthest_point_each_step(projection_dim):
    features = torch.randn(300, 12, generator=torch.Generator().manual_seed(1))
    picks = greedy_coreset(features, 0.1, projection_dim=projection_dim, init="random_point", seed=3).tolist()
    assert len(picks) == 30 == len(set(picks))
    # the distances the selection sees: the same projection, drawn first from the same seed
    space = features if projection_dim is None else features @ projection_matrix(12, 4, torch.Generator().manual_seed(3))
    for step in range(1, len(picks)):
        covered = min_distance_to(space, picks[:step])
        assert covered[picks[step]] == pytest.approx(covered.max().item(), rel=1e-5), step
    if projection_dim is not None:  # the projection matters: on the raw features the picks differ
        assert picks != greedy_coreset(features, 0.1, projection_dim=None, init="random_point", seed=3).tolist()


def official_style_selection(points: torch.Tensor, size: int, starts: torch.Tensor) -> list[int]:
    """The official approximate sampler's loop, transcribed: Euclidean distances, cat + min per step."""
    distance = lambda a, b: ((a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]).clamp(0).sqrt()
    running = distance(points, points[starts]).mean(-1).reshape(-1, 1)
    picks = []
    for _ in range(size):
        index = int(torch.argmax(running))
        picks.append(index)
        running = torch.cat([running, distance(points, points[index:index + 1])], -1).min(1).values.reshape(-1, 1)
    return picks


def test_coreset_matches_official_sampler_loop():
    features = torch.randn(500, 64, generator=torch.Generator().manual_seed(2))
    picks = greedy_coreset(features, 0.1, projection_dim=16, init="mean_distance", init_points=10, seed=7)
    generator = torch.Generator().manual_seed(7)  # documented draw order: projection, then starts
    projected = features @ projection_matrix(64, 16, generator)
    starts = torch.randperm(500, generator=generator)[:10]
    assert picks.tolist() == official_style_selection(projected, 50, starts)


def test_coreset_is_seeded_and_sized():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    a = greedy_coreset(features, 0.25, projection_dim=4, seed=5)
    assert torch.equal(a, greedy_coreset(features, 0.25, projection_dim=4, seed=5))
    assert not torch.equal(a, greedy_coreset(features, 0.25, projection_dim=4, seed=6))
    assert len(a) == coreset_size(200, 0.25) == 50
    assert coreset_size(7, 0.1) == 1 and coreset_size(1000, 0.1) == 100  # int(N * ratio), at least 1
    assert torch.equal(greedy_coreset(features, 1.0), torch.arange(200))
    with pytest.raises(ValueError, match="ratio must be in"):
        greedy_coreset(features, 0.0)


# --------------------------------------------------------------------------------- embedding
@pytest.mark.parametrize(("n", "m"), [(9216, 1024), (4608, 1024), (2048, 1024), (576, 1024), (10, 3), (7, 7)])
def test_adaptive_pool_taps_equal_torch_adaptive_pooling(n, m):
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(n))
    index, weight = adaptive_pool_taps(n, m)
    ours = sum(x[:, index[k]] * weight[k] for k in range(index.shape[0]))
    torch.testing.assert_close(ours, F.adaptive_avg_pool1d(x[:, None], m)[:, 0], rtol=1e-5, atol=1e-6)


def official_embedding(stages: list[torch.Tensor], p: int, pretrain_dim: int, dim: int) -> torch.Tensor:
    """The official sequence, transcribed: unfold p x p, resize the unfolded patches of deeper
    stages to the first grid, adaptive-pool each stage's C·p² vector, stack, adaptive-pool again."""
    batch = stages[0].shape[0]
    ref_h, ref_w = stages[0].shape[-2:]
    per_stage = []
    for x in stages:
        channels, (h, w) = x.shape[1], x.shape[-2:]
        patches = F.unfold(x, kernel_size=p, padding=p // 2).reshape(batch, channels, p, p, h, w)
        if (h, w) != (ref_h, ref_w):
            patches = F.interpolate(patches.reshape(-1, 1, h, w), size=(ref_h, ref_w), mode="bilinear",
                                    align_corners=False).reshape(batch, channels, p, p, ref_h, ref_w)
        vectors = patches.permute(0, 4, 5, 1, 2, 3).reshape(batch * ref_h * ref_w, 1, channels * p * p)
        per_stage.append(F.adaptive_avg_pool1d(vectors, pretrain_dim)[:, 0])
    stacked = torch.stack(per_stage, 1).reshape(batch * ref_h * ref_w, 1, -1)
    return F.adaptive_avg_pool1d(stacked, dim)[:, 0]


@pytest.mark.parametrize(("channels", "pretrain_dim", "dim", "p"), [((16, 24), 64, 48, 3), ((8, 12), 100, 30, 3),
                                                                   ((6, 10), 20, 20, 1)])
def test_patch_embedding_matches_official_sequence(channels, pretrain_dim, dim, p):
    g = torch.Generator().manual_seed(0)
    stages = [torch.rand(2, channels[0], 8, 10, generator=g), torch.rand(2, channels[1], 4, 5, generator=g)]
    ours = LocallyAwarePatchEmbedding(channels, patch_size=p, pretrain_embed_dim=pretrain_dim, embed_dim=dim)(stages)
    assert ours.shape == (2, dim, 8, 10)
    expected = official_embedding(stages, p, pretrain_dim, dim)
    torch.testing.assert_close(ours.permute(0, 2, 3, 1).reshape(-1, dim), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- distances / scores
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_nearest_neighbours_equal_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 16, generator=g) * 3, torch.randn(40, 16, generator=g) * 3
    squared, index = nearest_neighbours(queries, bank, chunk)
    brute = torch.cdist(queries.double(), bank.double())
    torch.testing.assert_close(squared.double().sqrt(), brute.amin(1), rtol=1e-5, atol=1e-4)
    assert torch.equal(index, brute.argmin(1))


def test_reweighting_known_answer_on_hand_made_bank():
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    patches = torch.tensor([[[0.1, 0.0], [3.0, 0.0]]])  # one image, two patches
    # nearest rows: patch 0 -> (0, 0) at 0.1; patch 1 -> (1, 0) at 2: m_test* = (3, 0), m* = (1, 0), s* = 2.
    # N_3(m*) = (1, 0), (0, 0), (0, 2) (distances 0, 1, √5 from m*); from m_test*: 2, 3, √13.
    scores, index = torch.tensor([[0.1, 2.0]]), torch.tensor([[0, 1]])
    expected = (1 - math.exp(2) / (math.exp(2) + math.exp(3) + math.exp(math.sqrt(13)))) * 2.0
    got = reweighted_image_scores(scores, index, patches, bank, num_neighbors=3)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # b larger than the bank uses the whole bank
    everything = 1 - math.exp(2) / sum(math.exp(d) for d in (2, 3, math.sqrt(13), math.sqrt(29)))
    assert reweighted_image_scores(scores, index, patches, bank, num_neighbors=9).item() == pytest.approx(
        everything * 2.0, rel=1e-6)


def fitted_model(**options) -> tuple[PatchCoreModel, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    model = PatchCoreModel(**{**TINY, **options}).eval()
    train, test = torch.randn(3, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    model.set_memory_bank(model.embed(train)[::3])
    return model, train, test


def test_distance_map_equals_brute_force_nearest_neighbour():
    model, train, test = fitted_model(blur_sigma=0.0, image_score="max")
    grid = model.embed_grid(test)  # [2, 8, 8, D] (tiny stage 1: stride 4)
    brute = torch.cdist(grid.reshape(-1, grid.shape[-1]).double(), model.memory_bank.double()).amin(1)
    brute = brute.view(2, 1, 8, 8).float()
    out = model(test)
    expected_map = F.interpolate(brute, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.anomaly_map, expected_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.pred_score, brute.flatten(1).amax(1), rtol=1e-4, atol=1e-4)
    # the squared variant (official FAISS search) squares the patch scores
    model.distance = "squared_euclidean"
    torch.testing.assert_close(model(test).pred_score, out.pred_score ** 2, rtol=1e-4, atol=1e-4)
    # a bank holding every training patch scores the training images ~0 everywhere
    model.set_memory_bank(model.embed(train))
    assert model(train).anomaly_map.abs().max() < 1e-2


def test_blur_is_applied_to_the_map_only():
    model, _, test = fitted_model(blur_sigma=0.0)
    raw = model(test)
    model.blur_sigma = 4.0
    blurred = model(test)
    torch.testing.assert_close(blurred.anomaly_map, gaussian_blur(raw.anomaly_map, 4.0))
    assert (blurred.anomaly_map - raw.anomaly_map).abs().max() > 1e-3
    torch.testing.assert_close(blurred.pred_score, raw.pred_score)  # scores come from the unblurred patches


def test_reweighted_score_in_forward_matches_the_formula():
    model, _, test = fitted_model(image_score="reweighted", reweight_neighbors=4)
    out = model(test)
    patches = model.embed(test).double()
    bank = model.memory_bank.double()
    for b in range(len(test)):
        rows = patches.view(2, -1, patches.shape[-1])[b]
        distances = torch.cdist(rows, bank)
        best = distances.amin(1).argmax()
        s_star, m_star = distances[best].min(0)
        support = torch.cdist(bank[m_star][None], bank)[0].topk(4, largest=False).indices
        to_support = torch.cdist(rows[best][None], bank[support])[0]
        expected = (1 - torch.exp(s_star) / torch.exp(to_support).sum()) * s_star
        assert out.pred_score[b].item() == pytest.approx(expected.item(), rel=1e-3)


def test_unfitted_model_and_bad_bank_fail_clearly():
    model = PatchCoreModel(**TINY)
    with pytest.raises(RuntimeError, match="empty memory bank"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"memory bank must be \[N >= 1, 16\]"):
        model.set_memory_bank(torch.zeros(4, 15))


@pytest.mark.parametrize(("options", "message"), [
    ({"distance": "manhattan"}, "PatchCore distance must be one of"),
    ({"image_score": "mean"}, "PatchCore image_score must be one of"),
    ({"reweight_neighbors": 1}, "PatchCore reweight_neighbors must be >= 2"),
    ({"patch_size": 2}, "PatchCore patch_size must be a positive odd number"),
    ({"blur_sigma": -1.0}, "PatchCore blur_sigma must be >= 0"),
    ({"embed_dim": 0}, "PatchCore embed_dim must be >= 1"),
    ({"coreset_ratio": 0.0}, "PatchCore coreset_ratio must be in"),
    ({"coreset_ratio": 1.5}, "PatchCore coreset_ratio must be in"),
    ({"coreset_init": "first"}, "PatchCore coreset_init must be one of"),
    ({"coreset_projection_dim": 0}, "PatchCore coreset_projection_dim must be >= 1"),
    ({"coreset_init_points": 0}, "PatchCore coreset_init_points must be >= 1"),
])
def test_bad_options_give_one_line_errors_naming_the_option(options, message):
    with pytest.raises(ValueError, match=message) as info:
        PatchCore(**{**TINY, **options})
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- Lightning, end to end
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from anomaly_bench.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("patchcore") / "mvtec"
    write_dataset("mvtec", root, categories=["grid", "ring"], size=64, seed=0, train=10, test_good=6, per_defect=3)
    return root


def datamodule(root, **kwargs):
    from anomaly_bench.data import MVTecAD

    return MVTecAD(root=root, category="all", image_size=64, batch_size=8, num_workers=0, **kwargs)


@pytest.fixture(scope="module")
def fitted(synthetic, tmp_path_factory):
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        L.seed_everything(0)
        model = no_callbacks(PatchCore(backbone="resnet18", layers=[1, 2], pretrained=False, pretrain_embed_dim=128,
                                       embed_dim=128))
        # a held-out validation split: Lightning's sanity check runs before the bank exists, and
        # the bank must be built before the end-of-epoch validation (which precedes on_train_epoch_end)
        data = datamodule(synthetic, validation="train_holdout", val_fraction=0.2)
        trainer = quiet_trainer()
        trainer.fit(model, datamodule=data)
        path = tmp_path_factory.mktemp("ckpt") / "patchcore.ckpt"
        trainer.save_checkpoint(path)
    return model.eval(), trainer, data, path


def test_fit_is_one_pass_and_keeps_ten_percent(fitted):
    model, trainer, data, _ = fitted
    assert trainer.current_epoch == 1 and trainer.fit_loop.max_epochs == 1 and trainer.global_step == 0
    train_images = sum(len(batch) for batch in data.train_dataloader())  # what is left after the hold-out
    assert 0 < train_images < 20
    patches = train_images * 16 * 16  # resnet18 layer1 at 64 px: stride 4
    assert len(model.model.memory_bank) == int(patches * 0.1)
    assert "val/normal_score_mean" in trainer.callback_metrics  # validation ran on the fitted bank


def test_fit_then_test_beats_chance(fitted):
    model, _, data, _ = fitted
    data.setup("test")
    scores, labels, inside, outside = [], [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            out = model(batch.image)
            scores += out.pred_score.tolist()
            labels += batch.label.tolist()
            mask = batch.mask > 0.5
            inside.append(out.anomaly_map[mask])
            outside.append(out.anomaly_map[~mask])
    auroc = roc_auc_score(labels, scores)
    assert auroc > 0.9, f"image AUROC {auroc:.3f}"
    assert torch.cat(inside).mean() > 1.5 * torch.cat(outside).mean()  # maps light up on the defects


def test_memory_bank_survives_a_lightning_checkpoint(fitted):
    model, _, _, path = fitted
    restored = PatchCore.load_from_checkpoint(path, map_location="cpu").eval()
    assert torch.equal(restored.model.memory_bank, model.model.memory_bank)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(images), restored(images)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    torch.testing.assert_close(a.pred_score, b.pred_score)
    # the plain torch module restores it too (no Lightning): the buffer is resized on load
    plain = PatchCoreModel(backbone="resnet18", layers=[1, 2], pretrained=False, pretrain_embed_dim=128, embed_dim=128)
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    plain.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    assert torch.equal(plain.memory_bank, model.model.memory_bank)


def test_explicit_max_epochs_other_than_one_is_an_error(synthetic):
    model = no_callbacks(PatchCore(**TINY))
    with pytest.raises(ValueError, match=r"trainer.max_epochs=3; set trainer.max_epochs to 1 or leave it unset"):
        quiet_trainer(max_epochs=3).fit(model, datamodule=datamodule(synthetic))


def test_unseeded_coreset_follows_the_global_seed():
    def bank(seed: int) -> torch.Tensor:
        model = PatchCore(**TINY, coreset_ratio=0.2)
        model.on_train_epoch_start()
        model._embeddings = [torch.randn(100, 16, generator=torch.Generator().manual_seed(0))]
        torch.manual_seed(seed)
        model.on_train_epoch_end()
        return model.model.memory_bank

    assert torch.equal(bank(1), bank(1))
    assert not torch.equal(bank(1), bank(2))


def test_an_epoch_without_normal_images_is_a_clear_error():
    model = PatchCore(**TINY)
    model.on_train_epoch_start()
    with pytest.raises(RuntimeError, match="PatchCore saw no training images"):
        model.on_train_epoch_end()


# ------------------------------------------------------------------------------------ export
class _Outputs(torch.nn.Module):
    """The torch model with tensor outputs (ONNX graphs return tensors, not dataclasses)."""

    def __init__(self, model: PatchCoreModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.anomaly_map, out.pred_score


def test_forward_exports_to_onnx_and_openvino_with_the_same_numbers(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    # a bank larger than one chunk: the chunked search, the reweighting and the blur all in the graph
    model, _, test = fitted_model(bank_chunk_size=20, image_score="reweighted", reweight_neighbors=4)
    wrapped = _Outputs(model).eval()
    with torch.no_grad():
        expected = wrapped(test)
    path = tmp_path / "patchcore.onnx"
    torch.onnx.export(wrapped, (test,), str(path), input_names=["images"], output_names=["map", "score"],
                      dynamo=False, opset_version=17)
    got = ort.InferenceSession(str(path)).run(None, {"images": test.numpy()})
    torch.testing.assert_close(torch.from_numpy(got[0]), expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got[1]), expected[1], rtol=1e-4, atol=1e-5)
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([test.numpy()])
    torch.testing.assert_close(torch.from_numpy(result[0]), expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(result[1]), expected[1], rtol=1e-4, atol=1e-5)
