//! What operators do by hand (`dsr-ops`): send a request's work message again, and extend a
//! deadline as Art. 12(3) allows.

use super::{RequestError, Requests};
use crate::clock::Clock;
use crate::messages::{DomainEvent, SubjectNotice};
use crate::ports::{EventOutbox, RequestStore, WorkQueue};
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
                RequestState::AwaitingConfirmations
                | RequestState::Notifying
                | RequestState::Verifying => {
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
    /// the reason the subject is told: only before the first deadline passed, and the subject
    /// is told (a `deadline_extended` notice for the email service, an event for the platform).
    /// The same extension asked for again tells the subject again under the same message id,
    /// so an operator whose first command could not tell them runs it again.
    pub async fn extend_deadline<O: EventOutbox>(
        &self,
        id: RequestId,
        months: u32,
        reason: &str,
        outbox: &O,
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
        if let Some(done) = &request.deadline_extension {
            if done.months == months && done.reason == reason {
                self.tell_extension(&request, outbox).await?;
                return Ok(request);
            }
            return Err(RequestError::CannotExtend(
                "it was extended before (once is all the law allows)".to_owned(),
            ));
        }
        let refusal = |request: &Request, now: chrono::DateTime<chrono::Utc>| {
            if !request.state.is_open() {
                Some(format!("the request is {}", request.state))
            } else if request.due_at <= now {
                Some(format!(
                    "its deadline passed on {}; the law allows an extension only before it",
                    request.due_at.to_rfc3339()
                ))
            } else {
                None
            }
        };
        let now = self.clock.now();
        if let Some(why) = refusal(&request, now) {
            return Err(RequestError::CannotExtend(why));
        }
        let due_at = crate::request::one_month_after(request.received_at)
            .checked_add_months(Months::new(months))
            .ok_or_else(|| RequestError::CannotExtend("the new date is out of range".into()))?;
        let extension = DeadlineExtension {
            months,
            reason: reason.to_owned(),
            extended_at: now,
        };
        // The store checks again, in the write: still open, not extended, before its deadline.
        if !self.store.extend_deadline(id, due_at, &extension).await? {
            let now_seen = self.store.get(id).await?.ok_or(RequestError::NotFound)?;
            return Err(RequestError::CannotExtend(
                match (&now_seen.deadline_extension, refusal(&now_seen, now)) {
                    (Some(_), _) => "it was extended before (once is all the law allows)".into(),
                    (None, Some(why)) => why,
                    (None, None) => "the request changed meanwhile; try again".into(),
                },
            ));
        }
        tracing::info!(request_id = %id, months, due_at = %due_at, "deadline extended");
        let request = self.store.get(id).await?.ok_or(RequestError::NotFound)?;
        self.tell_extension(&request, outbox).await?;
        Ok(request)
    }

    /// The subject is told through the email service; the platform gets the event (with the
    /// subject's keyed hash only).
    async fn tell_extension<O: EventOutbox>(
        &self,
        request: &Request,
        outbox: &O,
    ) -> Result<(), RequestError> {
        let Some(extension) = &request.deadline_extension else {
            return Ok(());
        };
        let event = DomainEvent::deadline_extended(
            request.id,
            self.hasher.hash(&request.subject),
            extension,
            request.due_at,
        );
        let not_told = |err: crate::ports::ChannelError| RequestError::ExtensionNotTold {
            due_at: request.due_at,
            cause: err.to_string(),
        };
        outbox
            .tell(&SubjectNotice::of(&event, request.subject.clone()))
            .await
            .map_err(not_told)?;
        outbox.publish(&event).await.map_err(not_told)?;
        tracing::info!(request_id = %request.id, "subject told of the extended deadline");
        Ok(())
    }
}
