//! Lab connector (issue 4), in progress.
