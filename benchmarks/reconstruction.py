"""Deblurring and MRI benchmark: learned 1-Lipschitz priors vs TV and the no-prior baseline.

Parameters come from ``problems/tuned_defaults.json`` (written by ``python cli.py tune
... --write`` on the tuning images); a (problem, method) pair without a stored entry is
tuned here, on the tuning images only, before the test images are touched.
"""

from __future__ import annotations

import time

from lipden.pretrained import load_denoiser
from lipden.reconstruction import psnr_per_image, reconstruct
from lipden.tuning import tune
from problems import dev_set, problem_from_name

from .common import machine, write_results

SETUPS = {
    "mri": {
        "problems": ["mri-random-x4-cf0.08-noise0.002", "mri-random-x8-cf0.04-noise0.002",
                     "mri-equispaced-x4-cf0.08-noise0.002", "mri-equispaced-x8-cf0.04-noise0.002"],
        "quick_problems": ["mri-random-x4-cf0.08-noise0.002"],
        "test": ("mri_colin27", slice(8, 40)), "quick_test": ("mri_colin27", slice(8, 10)),
        "tune": ("mri_colin27", slice(0, 8)), "quick_tune": ("mri_colin27", slice(0, 2)),
    },
    "deblur": {
        "problems": ["deblur-gaussian1.6-noise0.01", "deblur-motion31-seed1-noise0.01",
                     "deblur-uniform9-noise0.01", "deblur-motion31-seed2-noise0.01",
                     "deblur-gaussian1.6-noise0.03", "deblur-motion31-seed1-noise0.03"],
        "quick_problems": ["deblur-gaussian1.6-noise0.01"],
        "test": ("bsd68", slice(0, 10)), "quick_test": ("bsd68", slice(0, 2)),
        "tune": ("set12", slice(0, 12)), "quick_tune": ("set12", slice(0, 2)),
    },
}
# (label, method, candidate models); "tv" has no model.
ROWS = [
    ("PnP-FBS, spline prior", "pnp-fbs", ["spline-sigma5", "spline-sigma15", "spline-sigma25"]),
    ("PnP-DRS, spline prior", "pnp-drs", ["spline-sigma5", "spline-sigma15", "spline-sigma25"]),
    ("RED, spline prior", "red", ["spline-sigma5", "spline-sigma15", "spline-sigma25"]),
    ("PnP-FBS, 1-Lipschitz ReLU prior", "pnp-fbs", ["relu-sigma15"]),
    ("TV (FISTA)", "tv", []),
]


def _parameters(problem, method: str, models: list[str], tuning_images, max_iter: int) -> tuple[dict, str]:
    stored = problem.default_parameters(method)
    if stored and (method == "tv" or stored.get("model") in models):
        return stored, "stored"
    result = tune(problem, tuning_images, models, method, max_iter=max_iter, progress=False)
    return result.parameters, "tuned now"


def _solve(problem, method: str, parameters: dict, images, max_iter: int, tol: float) -> dict:
    from lipden.baselines import tv_reconstruct

    params = dict(parameters)
    model = params.pop("model", None)
    denoiser = load_denoiser(model) if model else None
    psnrs, iterations, converged, increases, monotone = [], [], [], [], []
    started = time.perf_counter()
    for index, image in enumerate(images):
        y = problem.measure(image, seed=index)
        physics = problem.physics(image.shape)
        if method == "tv":
            x, its = tv_reconstruct(y, physics, params["weight"], max_iter=max_iter, tol=tol)
            conv, inc, mono = its < max_iter, None, None
        else:
            result = reconstruct(y, physics, denoiser, method, max_iter=max_iter, tol=tol, **params)
            x, its, conv = result.x, result.iterations, result.converged
            inc, mono = result.max_residual_increase, result.monotone
        psnrs += psnr_per_image(x, image).tolist()
        iterations.append(its)
        converged.append(conv)
        increases.append(inc)
        monotone.append(mono)
    return {
        "psnr": sum(psnrs) / len(psnrs), "per_image_psnr": psnrs,
        "iterations_mean": sum(iterations) / len(iterations), "converged_all": all(converged),
        "max_residual_increase": max((v for v in increases if v is not None), default=None),
        "monotone_all": all(m for m in monotone if m is not None) if method != "tv" else None,
        "seconds_per_image": (time.perf_counter() - started) / len(images),
    }


def run(kind: str, quick: bool = False, output: str = "results") -> dict:
    setup = SETUPS[kind]
    prefix = "quick_" if quick else ""
    max_iter, tol = (100, 1e-4) if quick else (500, 1e-5)
    test_images = dev_set(*setup[prefix + "test"])
    tuning_images = dev_set(*setup[prefix + "tune"])
    results: dict = {"machine": machine(), "quick": quick, "max_iter": max_iter, "tol": tol,
                     "test_set": f"{setup[prefix + 'test'][0]} {setup[prefix + 'test'][1]}",
                     "tuning_set": f"{setup[prefix + 'tune'][0]} {setup[prefix + 'tune'][1]}", "problems": {}}
    lines = [f"# {kind} reconstruction benchmark{' (QUICK: subsets, fewer iterations)' if quick else ''}", "",
             f"Test images: {results['test_set']}; parameters tuned on {results['tuning_set']}; "
             f"stop at relative residual {tol:g} or {max_iter} iterations. Machine: {results['machine']}.", ""]
    for name in setup[prefix + "problems"]:
        problem = problem_from_name(name)
        rows = {}
        baseline = [float(psnr_per_image(problem.baseline(problem.measure(im, seed=i), im.shape), im)[0])
                    for i, im in enumerate(test_images)]
        rows["zero-filled / A^T y"] = {"psnr": sum(baseline) / len(baseline), "per_image_psnr": baseline}
        for label, method, models in ROWS:
            parameters, source = _parameters(problem, method, models, tuning_images, 60 if quick else 150)
            row = _solve(problem, method, parameters, test_images, max_iter, tol)
            rows[label] = {**row, "method": method, "parameters": parameters, "parameters_source": source}
        results["problems"][name] = rows
        lines += [f"## {name}", "", "| method | PSNR (dB) | iterations | converged | residual non-increasing | s/image | parameters |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in rows.items():
            lines.append(
                f"| {label} | {row['psnr']:.2f} | {row.get('iterations_mean', '-')} | {row.get('converged_all', '-')} "
                f"| {row.get('monotone_all', '-')} | {row.get('seconds_per_image', 0):.1f} | {row.get('parameters', '')} |"
            )
        lines.append("")
    write_results(output, f"{kind}{'-quick' if quick else ''}", results, "\n".join(lines) + "\n")
    return results

