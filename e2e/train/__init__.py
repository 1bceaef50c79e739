"""Training SAE cells: the loop over packs (`loop`), a cell's dictionaries and optimizer
(`member`), and the MFR penalty between a cell's SAEs (`mfr`)."""

from e2e.train.loop import (
    MemberFailed,
    NonFiniteLossError,
    check_packable,
    lr_factor,
    pack_key,
    pack_step,
    train,
    train_pack,
)

__all__ = ["MemberFailed", "NonFiniteLossError", "check_packable", "lr_factor", "pack_key",
           "pack_step", "train", "train_pack"]
