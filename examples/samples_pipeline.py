"""A per-sample, genomics-style pipeline of stages: sequence, QC, align and call variants per sample, then summarise.

    python examples/samples_pipeline.py                  # local workers; run it again and every stage is cached
    python examples/samples_pipeline.py --small          # a quick run: 4 samples, a 2,000-base genome
    python examples/samples_pipeline.py --backend fargate                # emulated AWS on this machine
    python examples/samples_pipeline.py --backend fargate --no-emulate   # your AWS account (after `cloudburst setup`)

Every sample goes through the same stages, one call per sample (``stage.map``), as a sequencing pipeline runs
per-sample jobs:

- ``sequence``: the sample's genome is the reference with a few single-base variants, some shared by the
  population and some its own; reads of it are drawn at random places, with sequencing errors and quality
  strings (the synthetic stand-in for a FASTQ file), from the call's own random stream (``cb.rng()``);
- ``qc``: drops reads whose mean quality is low;
- ``align``: places each read on the reference by exact k-mer seeds, on a bigger worker (2 vCPUs, 4 GB);
- ``call_variants``: a pileup per position; a variant where most reads disagree with the reference;
- ``summarise``: all samples at once: variants per sample, those shared by every sample, and how many of the
  planted variants were found.

With ``seed=``, each call draws its own stream, so the reads are the same on every backend. The result of every
stage is cached: a second run with the same code, globals and seed runs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter
from typing import Any

import numpy as np

import cloudburst as cb
from cloudburst.emulator import Emulator

PIPELINE = "samples-pipeline"
BASES = "ACGT"
READ_LENGTH = 100
K = 12  # seed length for alignment
ERROR_RATE = 0.01
MIN_QUALITY = 25

# Globals: they reach the stages that read them, and are part of their cache keys (main() sets them).
genome_length = 5_000
coverage = 20
shared_variants: list[tuple[int, str]] = []


def random_reference(length: int, seed: int) -> str:
    """The reference genome: ``length`` random bases (the same for every sample)."""
    return "".join(np.random.default_rng(seed).choice(list(BASES), length))


reference = random_reference(genome_length, 0)


def mutate(position: int, rng: np.random.Generator) -> tuple[int, str]:
    """A single-base variant at ``position``: a base other than the reference's."""
    return position, str(rng.choice([b for b in BASES if b != reference[position]]))


@cb.stage(cpu=1, memory="2GB")
def sequence(sample: str) -> dict[str, Any]:
    """Reads of one sample's genome: the population's variants, 3 of its own, errors and quality strings."""
    rng = cb.rng()
    taken = {position for position, _ in shared_variants}
    free = [p for p in range(K, genome_length - K) if p not in taken]
    own = [mutate(int(p), rng) for p in rng.choice(free, 3, replace=False)]
    genome = list(reference)
    for position, base in shared_variants + own:
        genome[position] = base
    reads = []
    for start in rng.integers(0, genome_length - READ_LENGTH, genome_length * coverage // READ_LENGTH):
        read = genome[start : start + READ_LENGTH]
        bad = rng.random() < 0.05  # a few reads from a bad cluster: many errors, low quality
        errors = rng.random(READ_LENGTH) < (0.2 if bad else ERROR_RATE)
        read = [str(rng.choice(list(BASES))) if e else b for b, e in zip(read, errors, strict=True)]
        quality = rng.integers(5, 20, READ_LENGTH) if bad else rng.integers(28, 41, READ_LENGTH)
        reads.append(("".join(read), "".join(chr(33 + int(q)) for q in quality)))  # FASTQ's Phred+33
    return {"sample": sample, "planted": sorted(shared_variants + own), "reads": reads}


@cb.stage(cpu=1, memory="2GB")
def qc(run: dict[str, Any]) -> dict[str, Any]:
    """Keeps the reads whose mean Phred quality is at least ``MIN_QUALITY``."""
    kept = [(read, q) for read, q in run["reads"] if np.mean([ord(c) - 33 for c in q]) >= MIN_QUALITY]
    return {**run, "reads": kept, "sequenced": len(run["reads"])}


@cb.stage(cpu=2, memory="4GB")
def align(run: dict[str, Any]) -> dict[str, Any]:
    """Places each read where one of its k-mer seeds occurs once in the reference; unplaced reads are dropped."""
    index: dict[str, list[int]] = {}
    for i in range(len(reference) - K + 1):
        index.setdefault(reference[i : i + K], []).append(i)
    aligned = []
    for read, _ in run["reads"]:
        for offset in range(0, READ_LENGTH - K + 1, K):
            hits = index.get(read[offset : offset + K], [])
            if len(hits) == 1:
                aligned.append((hits[0] - offset, read))
                break
    return {"sample": run["sample"], "planted": run["planted"], "sequenced": run["sequenced"],
            "passed": len(run["reads"]), "aligned": aligned}  # fmt: skip


@cb.stage(cpu=1, memory="2GB")
def call_variants(run: dict[str, Any], min_depth: int = 4) -> dict[str, Any]:
    """A pileup of the aligned reads; a variant where at least 80 % of them agree on a non-reference base."""
    pileup: dict[int, Counter[str]] = {}
    for start, read in run["aligned"]:
        for i, base in enumerate(read, start):
            if 0 <= i < len(reference):
                pileup.setdefault(i, Counter())[base] += 1
    called = []
    for position, counts in sorted(pileup.items()):
        base, count = counts.most_common(1)[0]
        depth = sum(counts.values())
        if base != reference[position] and depth >= min_depth and count >= 0.8 * depth:
            called.append((position, base))
    return {"sample": run["sample"], "planted": run["planted"], "called": called,
            "reads": (run["sequenced"], run["passed"], len(run["aligned"]))}  # fmt: skip


@cb.stage
def summarise(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """All samples: each one's read counts and calls, the variants every sample has, and the recall."""
    shared = set.intersection(*(set(c["called"]) for c in calls)) if calls else set()
    planted = sum(len(c["planted"]) for c in calls)
    found = sum(len(set(c["planted"]) & set(c["called"])) for c in calls)
    return {
        "samples": {c["sample"]: {"reads": c["reads"], "variants": len(c["called"])} for c in calls},
        "shared": sorted(shared),
        "recall": found / planted if planted else 1.0,
        "false": sum(len(set(c["called"]) - set(c["planted"])) for c in calls),
    }


def pipeline(samples: list[str]) -> Any:
    """The graph: one call of each stage per sample, then one summary of them all."""
    return summarise(call_variants.map(align.map(qc.map(sequence.map(samples)))))


def report(summary: dict[str, Any]) -> None:
    for sample, row in summary["samples"].items():
        sequenced, passed, aligned = row["reads"]
        print(f"  {sample}  reads {sequenced:,}  passed QC {passed:,}  aligned {aligned:,}  variants {row['variants']}")
    print(f"  shared   {len(summary['shared'])} variants in every sample: {summary['shared']}")
    print(f"  recall   {summary['recall']:.3f} of the planted variants found, {summary['false']} false calls")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--genome", type=int, default=genome_length, help="bases in the reference")
    parser.add_argument("--coverage", type=int, default=coverage, help="mean reads per base")
    parser.add_argument("--small", action="store_true", help="a quick run: 4 samples, a 2,000-base genome")
    parser.add_argument("--backend", choices=["local", "fargate"], default="local")
    parser.add_argument(
        "--emulate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the fargate backend against emulated AWS on this machine (default); --no-emulate uses your account",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--explain", action="store_true", help="say why each stage ran or was cached")
    args = parser.parse_args()
    if args.small:
        args.samples, args.genome = 4, 2_000
    return args


def main() -> None:
    global genome_length, coverage, reference, shared_variants
    args = parse_args()
    genome_length, coverage = args.genome, args.coverage
    reference = random_reference(genome_length, 0)
    population = np.random.default_rng(1)
    positions = population.choice(range(K, genome_length - K), 2, replace=False)
    shared_variants = [mutate(int(p), population) for p in positions]
    samples = [f"S{i:02d}" for i in range(1, args.samples + 1)]

    print(f"Pipeline {PIPELINE!r}: {len(samples)} samples, {genome_length:,}-base genome, {coverage}x, "
          f"backend={args.backend!r} (seed={args.seed})")  # fmt: skip
    started = time.perf_counter()
    with Emulator() if args.backend == "fargate" and args.emulate else contextlib.nullcontext():
        summary = cb.compute(
            pipeline(samples), name=PIPELINE, backend=args.backend, seed=args.seed, explain=args.explain
        )
    elapsed = time.perf_counter() - started
    run = cb.last_run()
    assert run is not None  # compute has just run in this process
    report(summary)
    print(f"  stages   {run.summary()}")
    print(f"  time     {elapsed:.2f} s")


if __name__ == "__main__":
    main()
