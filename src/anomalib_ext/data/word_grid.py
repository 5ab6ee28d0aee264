"""Word-grid prints: a letter defect that is locally normal, so only *where* it is makes it a defect.

Definition (issue 12): a semantic letter defect is one whose neighbourhood, at the backbone's receptive
field, also occurs somewhere in the normal print. Patch-level memory banks (PatchCore) then find a close
normal patch for every patch of the defect; a model that compares each place with the same place of the
training prints (aligned, positional) can still see it.

Construction from that definition:
- a small vocabulary of equal-length words, built as a chain of one-letter changes (``CARD -> CART ->
  PART -> PORT``), so every word has a vocabulary neighbour at Hamming distance 1;
- a fixed grid of monospaced word cells (rows x columns), each showing a vocabulary word in an
  arrangement drawn once per design, every word used several times;
- the ``letter`` defect either changes one letter so that the word becomes its vocabulary neighbour
  (one letter cell changes, and the changed word, with every letter's neighbours inside it, is a normal
  word of the print), or swaps two adjacent different words (every word stays a normal word, spacing
  kept). Other defect types apply to the grid's ink as to any print.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import cv2
import numpy as np

WORD_LENGTH = 4
VOCABULARY_SIZE = 4
GRID_ROWS = 7
GRID_COLUMNS = 4


@dataclass(frozen=True)
class WordGrid:
    """The grid of a word-grid print: its vocabulary and which word each cell shows (row-major)."""

    vocabulary: tuple[str, ...]
    cells: tuple[int, ...]  # vocabulary index per cell, rows x columns
    rows: int = GRID_ROWS
    columns: int = GRID_COLUMNS

    def words(self, cells: tuple[int, ...] | None = None) -> list[str]:
        """The word of every cell, row-major."""
        return [self.vocabulary[i] for i in (self.cells if cells is None else cells)]


def make_vocabulary(
    rng: np.random.Generator, size: int = VOCABULARY_SIZE, length: int = WORD_LENGTH
) -> tuple[str, ...]:
    """``size`` distinct words, each one letter away from the previous one (a chain of one-letter changes)."""
    letters = list(string.ascii_uppercase)
    words = ["".join(rng.choice(letters, length))]
    while len(words) < size:
        word = list(words[-1])
        position = int(rng.integers(length))
        word[position] = str(rng.choice([c for c in letters if c != word[position]]))
        if "".join(word) not in words:
            words.append("".join(word))
    return tuple(words)


def make_word_grid(rng: np.random.Generator) -> WordGrid:
    """A vocabulary and a fixed arrangement in which every word occurs at least twice."""
    vocabulary = make_vocabulary(rng)
    count = GRID_ROWS * GRID_COLUMNS
    base = np.arange(count) % len(vocabulary)  # every word about count / V times
    return WordGrid(vocabulary=vocabulary, cells=tuple(int(i) for i in rng.permutation(base)))


def one_letter_neighbours(vocabulary: tuple[str, ...], index: int) -> list[int]:
    """Vocabulary words that differ from word ``index`` in exactly one letter."""
    word = vocabulary[index]
    return [j for j, other in enumerate(vocabulary) if sum(a != b for a, b in zip(word, other, strict=True)) == 1]


def semantic_grid_change(grid: WordGrid, rng: np.random.Generator) -> tuple[int, ...]:
    """The cells after a letter defect, every word of which is a word of the normal print.

    Either one letter changes so that a word becomes a vocabulary neighbour, or two horizontally adjacent
    different words swap places.
    """
    cells = list(grid.cells)
    swaps = [(i, i + 1) for i in range(len(cells)) if (i + 1) % grid.columns != 0 and cells[i] != cells[i + 1]]
    if rng.random() < 0.5 and swaps:
        i, j = swaps[int(rng.integers(len(swaps)))]
        cells[i], cells[j] = cells[j], cells[i]
    else:
        i = int(rng.integers(len(cells)))
        cells[i] = int(rng.choice(one_letter_neighbours(grid.vocabulary, cells[i])))
    return tuple(cells)


def draw_word_grid(canvas: np.ndarray, grid: WordGrid, font: int, cells: tuple[int, ...] | None = None) -> None:
    """Draw the grid's letters (255) into a square uint8 canvas: monospaced cells, one word per grid cell.

    The grid spans the middle 72% of the width (so a photograph's pose change keeps it in frame) and
    0.14-0.76 of the height (the logo sits below).
    """
    s = canvas.shape[0]
    thickness = max(1, round(s / 512 * 2))
    letters_per_row = grid.columns * WORD_LENGTH + (grid.columns - 1)  # one empty letter cell between words
    (unit_w, _), _ = cv2.getTextSize("W", font, 1.0, thickness)
    scale = 0.72 * s / letters_per_row / unit_w
    (cell_w, cell_h), _ = cv2.getTextSize("W", font, scale, thickness)
    left = (s - letters_per_row * cell_w) // 2
    pitch = 0.62 * s / grid.rows
    for index, word in enumerate(grid.words(cells)):
        row, column = divmod(index, grid.columns)
        x0, y = left + column * (WORD_LENGTH + 1) * cell_w, round(0.14 * s + cell_h + row * pitch)
        for k, letter in enumerate(word):
            (w, _), _ = cv2.getTextSize(letter, font, scale, thickness)
            cv2.putText(
                canvas, letter, (x0 + k * cell_w + (cell_w - w) // 2, y), font, scale, 255, thickness, cv2.LINE_AA
            )
