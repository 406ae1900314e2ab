"""Where training is: steps, hangs and their budgets, and the checkpoint interval (``every =
"auto"``)."""
