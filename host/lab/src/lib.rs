//! haven-lab (issue 4), in progress.
