"""The paper-ready energy table: one row per model (params, T, SOPs, energy, ANN energy, ratio)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .energy import PAPER_IMAGENET_TABLE, EnergyReport, si


@dataclass
class EnergyTableRow:
    """One model's figures per sample; ``paper_energy_mj`` is the V1 paper's printed value, when it has one."""

    model: str
    params: int
    T: int
    input: str
    weights: str  # "random" or the checkpoint path
    sops: float
    energy_mj: float
    ann_energy_mj: float
    paper_constant: bool = False
    paper_energy_mj: float | None = None

    @property
    def ratio(self) -> float:
        return self.ann_energy_mj / self.energy_mj if self.energy_mj > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def table_row(report: EnergyReport, params: int, input_shape: str, weights: str = "random",
              paper_constant: bool = False) -> EnergyTableRow:
    """A row from a measured report; ``paper_constant`` puts the paper's 512-wide first-conv energy (1.596 mJ)
    in place of the model's own MAC energy, as the V1 paper's table does for every model."""
    energy = report.paper_energy_mj() if paper_constant else report.energy_mj
    paper = PAPER_IMAGENET_TABLE.get(report.model)
    return EnergyTableRow(report.model, params, report.T, input_shape, weights, report.sops, energy,
                          report.ann_energy_mj, paper_constant, paper[1] if paper else None)


def format_energy_table(rows: list[EnergyTableRow], markdown: bool = False) -> str:
    """The rows as a fixed-width terminal table or a Markdown table."""
    header = ["model", "params", "T", "input", "weights", "SOPs", "energy (mJ)", "ANN energy (mJ)", "ANN/SNN",
              "paper energy (mJ)"]
    body = []
    for r in rows:
        paper = "-" if r.paper_energy_mj is None else f"{r.paper_energy_mj:.3f}"
        body.append([r.model, f"{r.params / 1e6:.2f}M", str(r.T), r.input, r.weights, si(r.sops),
                     f"{r.energy_mj:.4g}", f"{r.ann_energy_mj:.4g}", f"{r.ratio:.1f}x", paper])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(fmt(b) for b in body)])
