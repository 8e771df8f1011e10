"""The nnU-Net glue: plans read and written, the planner, its memory model, the LR schedule, trainer mixins
and trainer discovery, as functions and classes (their commands are in ``tools/``). The only layer besides
``trainers/`` that imports nnU-Net's planning and training code."""
