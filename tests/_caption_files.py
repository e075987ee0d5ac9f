"""Pascal-50S files laid out like the originals, for the reader and command tests."""

from __future__ import annotations

import numpy as np
from scipy.io import savemat


def pascal_files(tmp_path, pairs, votes, refs):
    """pair_pascal.mat / consensus_pascal.mat laid out like the originals (cells of strings, 48 triplets per pair)."""
    new_input = np.empty((1, len(pairs)), dtype=object)
    for i, (image, a, b, _) in enumerate(pairs):
        cell = np.empty((1, 3), dtype=object)
        cell[0, :] = [image, a, b]
        new_input[0, i] = cell
    category = np.array([[c for *_, c in pairs]], dtype=float)
    triplets = np.empty((1, 48 * len(pairs)), dtype=object)
    for i, (_, a, b, _) in enumerate(pairs):
        for j in range(48):
            cell = np.empty((1, 4), dtype=object)
            cell[0, :] = [refs[i][j % len(refs[i])], a, b, float(votes[i][j])]
            triplets[0, 48 * i + j] = cell
    savemat(tmp_path / "pair_pascal.mat", {"new_input": new_input, "category": category,
                                           "new_data": np.ones((len(pairs), 2))})
    savemat(tmp_path / "consensus_pascal.mat", {"triplets": triplets})
    return tmp_path / "pair_pascal.mat", tmp_path / "consensus_pascal.mat"
