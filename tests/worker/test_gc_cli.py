"""`copd checkpoints gc RUN [--dry-run]` against a real API: what goes, what stays (finals, what a unit not
done or a registered fork needs), files deleted and records marked."""

from __future__ import annotations

import json

from tests.worker.conftest import tiny_spec
from trainer.ckptfiles import has_optimizer, sha256_file, write_manifest


def _checkpoint(folder, step: int) -> tuple[str, int]:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "optimizer.pt").write_bytes(b"o" * 2000)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return write_manifest(folder, {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                                   for p in sorted(folder.iterdir())})


def test_gc_dry_run_lists_then_deletes_sparing_finals_and_forks(make_stack):
    stack = make_stack()
    stack.start_api()
    spec = tiny_spec(experts=[{"name": "text", "domain": "builtin:arith"}, {"name": "video", "domain": "builtin:frames"}],
                     schedule={"cycles": 3, "rl_steps": 2, "opd_steps": 1}, checkpoints={"keep_last": 1})
    with stack.client() as api:
        run = api.create_run(spec)
        root = stack.data_dir / "runs" / str(run.id)
        ids = {}
        for e in ("text", "video"):
            for c in (1, 2, 3):
                for kind, step in (("rl", 3 * c - 1), ("opd", 3 * c)):
                    folder = root / "checkpoints" / e / f"c{c}-{kind}"
                    sha, size = _checkpoint(folder, step)
                    ids[(e, folder.name)] = api.register_checkpoint(run.id, expert=e, cycle=c, step=step,
                                                                    uri=str(folder), sha256=sha, bytes=size).id
        sha, size = _checkpoint(root / "final", 9)
        final = api.register_checkpoint(run.id, expert="merged", cycle=3, step=9, uri=str(root / "final"),
                                        sha256=sha, bytes=size, final=True)
        units = root / "units"
        units.mkdir()
        for name in ("c0_eval", "c1_rl_text", "c1_rl_video", "c1_opd_text", "c1_opd_video", "c1_eval", "c2_rl_text",
                     "c2_rl_video", "c2_opd_text", "c2_opd_video", "c2_eval", "c3_rl_text", "c3_rl_video",
                     "c3_opd_text", "c3_opd_video", "c3_eval", "final_merge"):
            (units / f"{name}.done").write_text("{}")
        fork = api.fork(run.id, ids[("text", "c1-opd")], name="from-c1")  # a registered fork needs c1-opd

        dry = stack.copd("checkpoints", "gc", str(run.id), "--dry-run")
        assert dry.returncode == 0, dry.stderr
        gone = sorted(line.split()[2:4] for line in dry.stdout.splitlines() if line.startswith("delete"))
        # keep_last 1: each expert's c3-opd; the fork's c1-opd of both experts; the merged model is final
        assert gone == sorted([e, n] for e in ("text", "video") for n in ("c1-rl", "c2-rl", "c2-opd", "c3-rl"))
        assert "would delete 8 checkpoints" in dry.stdout
        assert all((root / "checkpoints" / e / n).is_dir() for e, n in gone)  # a dry run touches nothing
        assert not any(c.deleted_at for c in api.list_checkpoints(run.id, limit=100).items)

        real = stack.copd("checkpoints", "gc", str(run.id))
        assert real.returncode == 0, real.stderr
        assert "deleted 8 checkpoints" in real.stdout
        assert not any((root / "checkpoints" / e / n).exists() for e, n in gone)
        items = {c.id: c for c in api.list_checkpoints(run.id, limit=100).items}
        assert sorted(c.id for c in items.values() if c.deleted_at) == sorted(ids[tuple(g)] for g in gone)
        assert items[final.id].deleted_at is None and (root / "final").is_dir()
        # optimizer `last`: each expert's newest keeps it, and the fork point keeps it for the fork
        assert has_optimizer(root / "checkpoints/text/c3-opd") and has_optimizer(root / "checkpoints/video/c1-opd")

        again = stack.copd("checkpoints", "gc", str(run.id), "--dry-run")
        assert again.returncode == 0 and "nothing to collect" in again.stdout
        listed = stack.copd("checkpoints", "list", str(run.id), "--all")
        assert listed.returncode == 0 and listed.stdout.count("deleted") == 8
        bad = stack.copd("checkpoints", "gc", str(run.id), "--optimizer", "some")
        assert bad.returncode != 0 and "optimizer" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        missing = stack.copd("checkpoints", "gc", "99999")
        assert missing.returncode == 1 and "99999" in missing.stderr
        assert fork.parent_checkpoint_id == ids[("text", "c1-opd")]
