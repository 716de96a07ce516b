import json

from services.trainer.dpo import last_complete_checkpoint


def test_resume_skips_a_checkpoint_left_half_written_by_a_crash(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-10").mkdir()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-10" / "README.md").write_text("weights were being written")
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")
