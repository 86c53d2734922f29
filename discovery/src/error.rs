//! What can go wrong talking to a registry.

/// A registry's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A registry URL this crate cannot read.
    #[error("invalid registry url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, without its password or token.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry URL of a backend this build leaves out.
    #[error("registry url `{url}` needs the `{feature}` feature of switchboard-discovery")]
    NotBuilt {
        /// The URL, without its password or token.
        url: String,
        /// The cargo feature to turn on.
        feature: &'static str,
    },
    /// The registry refused or failed an operation; `source` is its client's error.
    #[error("{context}")]
    Backend {
        /// What was being done, where (never a password or token).
        context: String,
        /// The registry client's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A record in the registry that is not a Switchboard instance.
    #[error("invalid instance record at {key}: {source}")]
    Record {
        /// Where it was found.
        key: String,
        /// Why it could not be read.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The registry's failure at `context`, keeping its client's error.
    pub fn backend(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Backend {
            context: context.into(),
            source: Some(Box::new(source)),
        }
    }

    /// The registry's refusal at `context`, with no client error to keep.
    pub fn refused(context: impl Into<String>) -> Self {
        Error::Backend {
            context: context.into(),
            source: None,
        }
    }
}

/// An error with its sources, `a: b: c`, for a log line.
pub(crate) struct Chain<'a>(&'a Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl Error {
    /// This error and its sources, for a log line.
    #[allow(dead_code)] // only the etcd and Consul backends log errors
    pub(crate) fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

impl From<Error> for switchboard::Error {
    fn from(e: Error) -> Self {
        switchboard::Error::Layer(Box::new(e))
    }
}

/// A registry's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
