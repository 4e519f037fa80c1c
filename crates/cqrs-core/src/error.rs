//! How domain errors are classified, so the HTTP edge maps them once.

/// What kind of refusal a domain error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The aggregate does not exist.
    NotFound,
    /// A field breaks a rule; `field` names it.
    Invalid {
        /// The offending field, in the request's own naming.
        field: String,
    },
    /// The command is not allowed in the aggregate's current state.
    Conflict,
}

/// Implemented by every aggregate error.
pub trait DomainError {
    /// The class of error, which decides the HTTP status.
    fn kind(&self) -> ErrorKind;
    /// A stable machine-readable code ("not_paid").
    fn code(&self) -> &'static str;
}
