//! haven-plan (issue 4), in progress.
