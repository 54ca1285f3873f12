//! Fencing tokens for connector side effects.
//!
//! Every side effect of a plan step runs inside [`scope`] with the step
//! attempt's fencing token (its position in the replicated state store's
//! history, which only grows, across primaries too). The plugin runtime
//! stamps each outgoing HTTP request of a plugin call made in the scope with
//! the `Haven-Fence` header; a system that remembers the highest token it has
//! seen refuses a deposed primary still acting on an older one.

use std::future::Future;

/// The HTTP header that carries the token on requests plugins send.
pub const HEADER: &str = "haven-fence";

tokio::task_local! {
    static FENCE: u64;
}

/// Runs `fut` with `token` as the fencing token of every connector call it makes.
pub async fn scope<F: Future>(token: u64, fut: F) -> F::Output {
    FENCE.scope(token, fut).await
}

/// The fencing token of the current task, if it runs inside [`scope`].
pub fn current() -> Option<u64> {
    FENCE.try_with(|t| *t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_is_visible_inside_the_scope_only() {
        assert_eq!(current(), None);
        assert_eq!(scope(42, async { current() }).await, Some(42));
        assert_eq!(scope(7, scope(9, async { current() })).await, Some(9));
        assert_eq!(current(), None);
    }
}
