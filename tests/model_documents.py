"""Hand-written pixseg model documents, for tests that need a model file without fitting one."""

from __future__ import annotations

import numpy as np


def model_document(*, n_clusters: int = 3, schema_version: int = 3, **extra: object) -> dict:
    """A model document of ``n_clusters`` clusters on RGB channels, as the schema 2 and 3 writers
    shape it (no ``classes``); ``extra`` keys are added or replace the written ones."""
    return {
        "format": "pixseg-model",
        "schema_version": schema_version,
        "features": {
            "groups": ["channels"],
            "n_channels": 3,
            "has_alpha": False,
            "dtype": "uint8",
            "channel_ranges": [[0.0, 255.0]] * 3,
            "sigmas": [],
            "truncate": 4.0,
            "mask": "none",
        },
        "feature_columns": ["ch0", "ch1", "ch2"],
        "centroids": np.sort(np.random.default_rng(1).random((n_clusters, 3)), axis=0).tolist(),
        "feature_mean": [0.5, 0.5, 0.5],
        "feature_std": [0.2, 0.2, 0.2],
        "seed": 0,
        "sample_size": 100,
        "sample_inertia": 1.5,
        "n_iter": 4,
        **extra,
    }
