"""Golden outputs pinned before the package is reorganised: every shipped denoiser on a fixed
input, its certified bound, and one ``reconstruct`` per method (plus TV), each keyed by the
sha256 of the weights it used, so that a moved module that changes a number is caught while a
reshipped model (new weights) is told apart from a regression. The solves use frozen copies of
two priors (``golden/prior-*.safetensors``), so they stay comparable whatever is shipped.

Write or refresh with ``python -m tests.golden_outputs`` (only when a change of outputs is
intended); ``tests/test_golden.py`` recomputes and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GOLDEN = Path(__file__).with_name("golden")
CERTIFY_SHAPE = (1, 1, 40, 40)
PROBLEM = "deblur-gaussian1.6-noise0.01"
MRI_PROBLEM = "mri-random-x4-cf0.08-noise0.002"
#: method -> (problem, model, reconstruct keyword arguments): short fixed solves, no early stop
SOLVES = {
    "pnp-fbs": (PROBLEM, "spline-sigma15", {"step": 1.99, "strength": 0.07, "relaxation": 1.0}),
    "pnp-fbs-box": (MRI_PROBLEM, "spline-sigma5", {"step": 1.0, "strength": 0.025, "relaxation": 1.4,
                                                   "lower": 0.0, "upper": 1.0, "accelerate": 3}),
    "pnp-drs": (PROBLEM, "spline-sigma15", {"step": 20.0, "strength": 0.5, "relaxation": 0.5}),
    "red": (PROBLEM, "spline-sigma15", {"weight": 0.03}),
}


def fixed_input(size: int = 48) -> torch.Tensor:
    """(1, 1, size, size) crop of scikit-image's camera, noise 15/255 from seed 0."""
    from skimage import data

    clean = torch.from_numpy(data.camera()[200:200 + size, 200:200 + size].astype("float32") / 255)[None, None]
    return clean + 15 / 255 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))


def compute(names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors, records): the golden outputs of the current code and shipped weights."""
    import lipden
    import problems

    torch.manual_seed(0)
    shas = {name: lipden.denoiser_card(name)["sha256"] for name in lipden.list_denoisers()}
    tensors: dict[str, torch.Tensor] = {}
    records: dict[str, dict] = {}
    noisy = fixed_input()
    for name in names or sorted(shas):
        model = lipden.load_denoiser(name)
        with torch.no_grad():
            tensors[f"denoise.{name}"] = model(noisy).contiguous()
        records[f"denoise.{name}"] = {"sha256": shas[name],
                                      "certified_40x40": model.lipschitz_certificate(CERTIFY_SHAPE)}
    for method, (problem_name, model_name, kwargs) in SOLVES.items():
        problem = problems.problem_from_name(problem_name)
        x = problems.default_image(problem.kind, 32)
        y = problem.measure(x, seed=0)
        solver = "pnp-fbs" if method == "pnp-fbs-box" else method
        prior = lipden.load_denoiser(GOLDEN / f"prior-{model_name}.safetensors")  # a frozen copy: reships leave it
        result = lipden.reconstruct(y, problem.physics(x.shape), prior, solver, max_iter=25, tol=1e-12, **kwargs)
        tensors[f"reconstruct.{method}"] = result.x.contiguous()
        records[f"reconstruct.{method}"] = {"sha256": None, "iterations": result.iterations}
    problem = problems.problem_from_name(PROBLEM)
    x = problems.default_image("natural", 32)
    estimate, _ = lipden.tv_reconstruct(problem.measure(x, seed=0), problem.physics(x.shape), 0.001, max_iter=25)
    tensors["reconstruct.tv"] = estimate.contiguous()
    records["reconstruct.tv"] = {"sha256": None}
    return tensors, records


def load() -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    return load_file(str(GOLDEN / "outputs.safetensors")), json.loads((GOLDEN / "outputs.json").read_text())


def write() -> None:
    tensors, records = compute()
    GOLDEN.mkdir(exist_ok=True)
    save_file(tensors, str(GOLDEN / "outputs.safetensors"))
    (GOLDEN / "outputs.json").write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(tensors)} golden outputs to {GOLDEN}")


if __name__ == "__main__":
    write()
