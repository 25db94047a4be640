"""Pictures of real vs synthetic series: PCA and t-SNE of the windows (TimeGAN's visual check:
each window averaged over features, then embedded in 2-D) and overlays of example series."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embedding_plots(real: np.ndarray, fake: np.ndarray, out_dir: Path, n: int = 1000, seed: int = 0,
                    tsne: bool = True, suffix: str = "") -> list[Path]:
    """Save ``pca{suffix}.png`` (and ``tsne{suffix}.png``) of up to ``n`` real and ``n`` synthetic
    windows."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    r = real[rng.permutation(len(real))[:n]].mean(2)
    f = fake[rng.permutation(len(fake))[:n]].mean(2)
    both = np.concatenate([r, f])
    paths = []
    centered = both - r.mean(0)
    _, _, vt = np.linalg.svd(centered[: len(r)], full_matrices=False)
    pca = centered @ vt[:2].T
    embeds = [("pca", pca)]
    if tsne:
        from sklearn.manifold import TSNE

        embeds.append(("tsne", TSNE(2, perplexity=min(40, len(both) // 4), init="pca",
                                    random_state=seed).fit_transform(both)))
    for name, e in embeds:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(*e[: len(r)].T, s=4, alpha=0.4, c="tab:red", label="real")
        ax.scatter(*e[len(r):].T, s=4, alpha=0.4, c="tab:blue", label="synthetic")
        ax.set_title(f"{name.upper()}: real vs synthetic"), ax.legend()
        fig.tight_layout()
        p = Path(out_dir) / f"{name}{suffix}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


def overlay(real: np.ndarray, fake: np.ndarray, columns: list[str], path: Path, k: int = 4) -> Path:
    """Save ``k`` real and ``k`` synthetic series per feature (up to 6 features) side by side."""
    plt = pyplot()
    F = min(real.shape[2], 6)
    fig, axes = plt.subplots(F, 2, figsize=(10, 1.8 * F), squeeze=False, sharex=True)
    for f in range(F):
        for j, (data, title) in enumerate([(real, "real"), (fake, "synthetic")]):
            ax = axes[f, j]
            for i in range(min(k, len(data))):
                ax.plot(data[i, :, f], lw=1)
            if f == 0:
                ax.set_title(title)
            ax.set_ylabel(columns[f] if f < len(columns) else f"x{f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
