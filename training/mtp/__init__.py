"""MTP multi-task pretraining on SAMRS: readers (samrs), tiny sample (sample), config, model, batches (data),
the loop (loop, `python -m training.mtp.loop`) and torchrun / DDP / FSDP setup (distributed)."""
