//! What operators do by hand (`dsr-ops`): send a request's work message again, and extend a
//! deadline as Art. 12(3) allows.

use super::{RequestError, Requests};
use crate::clock::Clock;
use crate::ports::{RequestStore, WorkQueue};
use crate::request::{DeadlineExtension, Request, RequestId, RequestState};
use chrono::Months;

impl<S: RequestStore, Q: WorkQueue, C: Clock> Requests<S, Q, C> {
    /// Sends the work message of a request a worker should pick up (received, or in a worker's
    /// state whose lease ran out) again. Anything else is refused with what to do instead.
    pub async fn retry(&self, id: RequestId) -> Result<Request, RequestError> {
        let request = self.store.get(id).await?.ok_or(RequestError::NotFound)?;
        let now = self.clock.now();
        let takeable = match request.state {
            RequestState::Received => true,
            RequestState::Collecting | RequestState::FanningOut => {
                request.lease.as_ref().is_none_or(|l| l.expires_at <= now)
            }
            _ => false,
        };
        if !takeable {
            return Err(RequestError::CannotRetry(match request.state {
                RequestState::Collecting | RequestState::FanningOut => {
                    "a worker holds it right now".to_owned()
                }
                RequestState::AwaitingConfirmations | RequestState::Notifying => {
                    "it waits on services; the watchdog re-sends their commands".to_owned()
                }
                state => format!("it is {state}; the subject can submit a new request"),
            }));
        }
        let hash = self.hasher.hash(&request.subject);
        self.send_work(&request, &hash).await.ok_or_else(|| {
            RequestError::CannotRetry("the work queue refused the message".into())
        })?;
        tracing::info!(request_id = %id, state = request.state.as_str(), "work message sent again by an operator");
        Ok(request)
    }

    /// Art. 12(3): extends an open request's deadline once, by one or two further months, with
    /// the reason the subject is told (it shows on their request).
    pub async fn extend_deadline(
        &self,
        id: RequestId,
        months: u32,
        reason: &str,
    ) -> Result<Request, RequestError> {
        if !(1..=DeadlineExtension::MAX_MONTHS).contains(&months) {
            return Err(RequestError::CannotExtend(format!(
                "by 1 or {} months, not {months}",
                DeadlineExtension::MAX_MONTHS
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > DeadlineExtension::MAX_REASON_CHARS {
            return Err(RequestError::CannotExtend(format!(
                "a reason of 1 to {} characters is required",
                DeadlineExtension::MAX_REASON_CHARS
            )));
        }
        let request = self.store.get(id).await?.ok_or(RequestError::NotFound)?;
        let due_at = crate::request::one_month_after(request.received_at)
            .checked_add_months(Months::new(months))
            .ok_or_else(|| RequestError::CannotExtend("the new date is out of range".into()))?;
        let extension = DeadlineExtension {
            months,
            reason: reason.to_owned(),
            extended_at: self.clock.now(),
        };
        if !self.store.extend_deadline(id, due_at, &extension).await? {
            return Err(RequestError::CannotExtend(
                match &request.deadline_extension {
                    Some(_) => "it was extended before (once is all the law allows)".to_owned(),
                    None => format!("the request is {}", request.state),
                },
            ));
        }
        tracing::info!(request_id = %id, months, due_at = %due_at, "deadline extended");
        self.store.get(id).await?.ok_or(RequestError::NotFound)
    }
}
