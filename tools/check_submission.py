"""Check that submission.py meets the handout's contract: the calls train.py, inference.py and
the autograder make into it (contract.py defines them), run once on random inputs.

    python check_submission.py                      # both tasks, each class's default latent_dim
    python check_submission.py --task VAE0label --latent_dim 16 --traceback

It builds each model, takes one real Adam step through forward and vae_loss, runs forward in
eval mode and decode(z, label) the handout's way, and checks shapes, ranges and gradients. A
pass means training and inference will run; how good the model is, train and grade to see.
(The course kit copies this file as it is; the autograder runs the same check.)
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAB = HERE if (HERE / "contract.py").is_file() else HERE.parent  # the kit's root, or tools/ in the repo
sys.path.insert(0, str(LAB))

import contract  # noqa: E402

if __name__ == "__main__":
    sys.exit(contract.main())
