//! In-memory adapters with the same semantics as the cloud ones (conditional writes included),
//! for unit tests of handlers and use cases. Not for production: nothing survives a restart,
//! and no Lambda binary links them (feature `memory`).

mod delayed;
mod erasure;
mod queues;
mod reports;
mod requests;

pub use delayed::{InMemoryDelayedStore, RecordingDispatchPorts};
pub use erasure::{RecordingDecisions, RecordingErasurePorts};
pub use queues::{InMemoryReportLinks, InMemoryWorkQueue};
pub use reports::{FakeSources, InMemoryReportStore, RecordingOutbox, RecordingResumes};
pub use requests::InMemoryRequestStore;

/// A lock that survives a thread that panicked while holding it: test doubles should not cascade failures.
fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

type Found =
    std::collections::BTreeMap<dsr_domain::identity::IdentifierKind, dsr_domain::SubjectId>;

/// Identity sources in memory: what each source (by `IdentitySource::describe`) knows of each
/// subject; a source not listed cannot answer.
#[derive(Debug, Default)]
pub struct InMemoryIdentities {
    /// By (source, subject).
    pub known: std::sync::Mutex<std::collections::BTreeMap<(String, String), Found>>,
    /// Sources that answer for every subject (an empty answer when it knows nothing).
    pub up: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Look-ups made, by source.
    pub asked: std::sync::Mutex<Vec<String>>,
}

impl InMemoryIdentities {
    /// `source` knows `subject` by these identifiers (kind, value).
    pub fn knows(&self, source: &str, subject: &str, identifiers: &[(&str, &str)]) {
        self.up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.to_owned());
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(
            (source.to_owned(), subject.to_owned()),
            identifiers
                .iter()
                .filter_map(|(kind, value)| {
                    Some((
                        dsr_domain::identity::IdentifierKind::parse(*kind).ok()?,
                        dsr_domain::SubjectId::parse(*value).ok()?,
                    ))
                })
                .collect(),
        );
    }
}

impl dsr_domain::identity::IdentityDirectory for InMemoryIdentities {
    fn look_up<'a>(
        &'a self,
        source: &'a dsr_domain::registry::IdentitySource,
        subject: &'a dsr_domain::SubjectId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Found, String>> + Send + 'a>>
    {
        let name = source.describe();
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        let up = self
            .up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&name);
        let known = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name, subject.as_str().to_owned()))
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            if !up {
                return Err("HTTP 503".to_owned());
            }
            Ok(known
                .into_iter()
                .filter(|(kind, _)| source.fields().contains_key(kind))
                .collect())
        })
    }
}
