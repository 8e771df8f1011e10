"""The nnU-Net glue: plans read and written, the planner command, its memory model, the LR schedule,
trainer mixins and trainer discovery. The only layer besides ``trainers/`` that imports nnU-Net's
planning and training code."""
