//! The confirm function's part: services' answers, the watchdog's checks, and moving the
//! request on to the notice and to completion.

use super::*;
use crate::hops::{self, Hop, HopMark};
use crate::messages::{DomainEvent, Origin, SubjectNotice};
use crate::metrics::{self, names, Metric};
use crate::ports::{Audited, TransitionOutcome};

/// How much earlier than its release time an erase-last service's check may act.
const RELEASE_CLOCK_TOLERANCE: chrono::Duration = chrono::Duration::seconds(5);

impl<S, X, D, E, C, R> Erasures<S, X, D, E, C, R>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    /// A service's confirmation. Duplicates change nothing; an unknown request or service is
    /// rejected. It counts only if `origin` is the service: published through the
    /// broker under the user the registry binds it to. Anything else is rejected (to the
    /// dead-letter queue with the reason) before the request is even looked at.
    pub async fn confirm(
        &self,
        confirmation: &Confirmation,
        origin: &Origin,
    ) -> Result<Handled, ErasureError> {
        let bound = self
            .registry
            .service(&confirmation.service)
            .and_then(|s| s.broker_user.as_deref());
        match (origin, bound) {
            (Origin::Broker(user), Some(bound)) if user == bound => {}
            (_, None) => {
                return Err(ErasureError::Rejected(format!(
                    "no broker user is registered for service `{}`: it cannot confirm over the broker",
                    confirmation.service
                )))
            }
            (origin, Some(bound)) => {
                return Err(ErasureError::Rejected(format!(
                    "a confirmation for `{}` from {origin}; only `{bound}`, the service's own broker user, may confirm for it",
                    confirmation.service
                )))
            }
        }
        let status = match confirmation.outcome {
            ConfirmationOutcome::Erased => ObligationStatus::Confirmed,
            ConfirmationOutcome::NotFound => ObligationStatus::NotFound,
            ConfirmationOutcome::Failed => ObligationStatus::Failed,
        };
        let receipt = confirmation.receipt.to_string();
        let (handled, recorded) = self
            .answer_recorded(
                confirmation.request_id,
                &confirmation.service,
                status,
                &receipt,
                true,
            )
            .await?;
        if let Some(sent_at) = recorded.and_then(|r| r.sent_at) {
            let latency = (self.clock.now() - sent_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::emit(
                Metric::seconds(names::CONFIRMATION_LATENCY, latency)
                    .with("Service", confirmation.service.clone()),
            );
        }
        Ok(handled)
    }

    /// An answer that came with the command (the service's own copies, a vendor's API). The
    /// request moves on from here unless the fan-out still holds it: its commit moves it on.
    pub(super) async fn answer(
        &self,
        request: &Request,
        service: &ServiceName,
        status: ObligationStatus,
        receipt: &str,
    ) -> Result<Handled, ErasureError> {
        let move_on = request.state != RequestState::FanningOut;
        Ok(self
            .answer_recorded(request.id, service, status, receipt, move_on)
            .await?
            .0)
    }

    /// Records an answer with one conditional write (nothing read first: the common case is
    /// an answer the obligation waits for). Only an answer that was not written is looked
    /// into: a message about no such request or service is rejected, a repeat finishes what
    /// its first delivery may have left undone.
    async fn answer_recorded(
        &self,
        id: RequestId,
        service: &ServiceName,
        status: ObligationStatus,
        receipt: &str,
        move_on: bool,
    ) -> Result<(Handled, Option<AnswerRecorded>), ErasureError> {
        let now = self.clock.now();
        let receipt: String = receipt.chars().take(4096).collect();
        let Some(recorded) = self
            .store
            .record_answer(id, service, status, &receipt, now)
            .await?
        else {
            let request = self.erasure(id).await?;
            self.obligation(&request, service).await?;
            // A redelivery: the first delivery may have recorded the answer and then failed
            // to count it or move the request on. Both are keyed, so they are simply run again.
            self.count_answer(id, service).await?;
            if move_on {
                self.advance(id, Pass::Again).await?;
            }
            return Ok((Handled::Nothing(Skipped::AlreadyAnswered), None));
        };
        crate::kill_point::reached("confirm.answered");
        self.count_answer(id, service).await?;
        self.store
            .record_event(id, &Audited::Answered { service, status }, now)
            .await?;
        tracing::info!(request_id = %id, service = %service, status = status.as_str(), "erasure answer recorded");
        if move_on {
            self.advance(id, Pass::First).await?;
        }
        Ok((Handled::Recorded, Some(recorded)))
    }

    /// The watchdog, and the release of the erase-last services.
    pub async fn check(&self, due: &ObligationDue) -> Result<Handled, ErasureError> {
        let request = self.erasure(due.request_id).await?;
        if request.state.is_terminal() {
            return Ok(Handled::Nothing(Skipped::RequestFinished));
        }
        let obligation = self.obligation(&request, &due.service).await?;
        if obligation.status.is_done() {
            // The watchdog is also the safety net for moving on: if the last confirmation
            // arrived while the fan-out was still committing, nothing else would advance it.
            self.advance(request.id, Pass::Again).await?;
            return Ok(Handled::Nothing(Skipped::AlreadyConfirmed));
        }
        if obligation.attempts > due.attempt {
            return Ok(Handled::Nothing(Skipped::NewerSendHasItsOwnCheck));
        }
        // Fewer recorded sends than this check was scheduled after: the send that scheduled it
        // failed or died before recording itself (the command may or may not have left). This
        // check stands in for it and makes that send (the command's idempotency key is the
        // same for every attempt).
        // An erase-last service is released only once the broker confirmed the notice and the
        // grace period after that passed (a check from before, or a forged one, changes nothing).
        // A little early is still released: the check is due at that time, and the clocks of
        // the scheduler and of this function may differ by a moment.
        let released = obligation
            .release_at
            .is_some_and(|at| at <= self.clock.now() + RELEASE_CLOCK_TOLERANCE);
        if obligation.last && (request.state != RequestState::Notifying || !released) {
            return Ok(Handled::Nothing(Skipped::WaitsForTheNotice));
        }
        let how = self.eraser(&obligation.service)?;
        if obligation.attempts >= how.max_sends {
            let now = self.clock.now();
            let escalated = self
                .store
                .escalate(request.id, &obligation.service, obligation.attempts, now)
                .await?;
            // Counted on a redelivered check too: the first may have escalated and failed here.
            self.count(
                HopMark::new(RequestKind::Erasure, Hop::Escalated, request.id, now)
                    .for_service(&obligation.service),
            )
            .await?;
            if escalated {
                // The line operators alert on (see README, "Operating it").
                tracing::warn!(
                    request_id = %request.id,
                    service = %obligation.service,
                    attempts = obligation.attempts,
                    status = obligation.status.as_str(),
                    alert = "erasure_obligation_escalated",
                    "service did not confirm the erasure: escalated"
                );
                metrics::emit(
                    Metric::count(names::ESCALATIONS, 1)
                        .with("Service", obligation.service.clone()),
                );
                return Ok(Handled::Escalated);
            }
            return Ok(Handled::Nothing(Skipped::AlreadyEscalated));
        }
        let attempt = obligation.attempts + 1;
        if obligation.last && obligation.attempts == 0 {
            // The erase-last service's release: counted before its command leaves, so that a
            // send that fails is retried under a release already counted.
            self.count(
                HopMark::new(
                    RequestKind::Erasure,
                    Hop::Released,
                    request.id,
                    self.clock.now(),
                )
                .for_service(&obligation.service),
            )
            .await?;
        }
        self.send(
            &request,
            &obligation.service,
            how,
            attempt,
            obligation.reopened,
        )
        .await?;
        if attempt > 1 {
            metrics::emit(Metric::count(names::RETRIES, 1).with("Kind", "erasure"));
        }
        Ok(Handled::Resent { attempt })
    }

    /// The bridge's receipt for a published message. Only the notice of an erasure moves
    /// anything: from the moment the broker confirmed it, the erase-last services wait the
    /// grace period, then their commands leave (the watchdog's check with attempt 0).
    /// Only the service itself (the bridge) may send receipts.
    pub async fn published(
        &self,
        receipt: &Published,
        origin: &Origin,
    ) -> Result<Handled, ErasureError> {
        if *origin != Origin::Internal {
            return Err(ErasureError::Rejected(format!(
                "a publication receipt from {origin}; only the service's own bridge sends them"
            )));
        }
        let request = match self.store.get(receipt.request_id).await? {
            Some(request) => request,
            None => {
                return Err(ErasureError::Rejected(format!(
                    "unknown request {}",
                    receipt.request_id
                )))
            }
        };
        // Receipts come for every notice (`report_ready` too); only the erasure's moves on.
        if request.kind != crate::RequestKind::Erasure {
            return Ok(Handled::Nothing(Skipped::NothingWaitsForIt));
        }
        let notice = SubjectNotice::of(
            &DomainEvent::erasure_notice(
                request.id,
                self.subject_hash(&request),
                receipt.published_at,
                receipt.published_at,
            ),
            request.subject.clone(),
        );
        if receipt.message_id != notice.message_id {
            return Ok(Handled::Nothing(Skipped::NothingWaitsForIt));
        }
        if request.state.is_terminal() {
            return Ok(Handled::Nothing(Skipped::RequestFinished));
        }
        let release = receipt.published_at + self.settings.grace;
        let mut release_at = release;
        let mut first = false;
        for last in self
            .store
            .obligations(request.id)
            .await?
            .iter()
            .filter(|o| o.last)
        {
            first |= last.release_at.is_none();
            // The first confirmed publication counts; a repeated notice does not push it back.
            release_at = self
                .store
                .set_release(request.id, &last.service, release)
                .await?;
            crate::kill_point::reached("confirm.release_set");
            if last.attempts == 0 && !last.status.is_done() {
                // Keyed: a redelivered receipt schedules the same check again, harmlessly.
                self.checks
                    .schedule(
                        &ObligationDue::new(request.id, &last.service, 0),
                        release_at,
                    )
                    .await?;
            }
        }
        if first {
            self.store
                .record_event(request.id, &Audited::NoticePublished, self.clock.now())
                .await?;
            tracing::info!(request_id = %request.id, release_at = %release_at, "erasure notice published; erase-last services released after the grace period");
        }
        self.advance(request.id, Pass::First).await?;
        Ok(Handled::NoticePublished { release_at })
    }

    async fn count_completed(&self, id: RequestId) -> Result<(), ErasureError> {
        self.count(HopMark::new(
            RequestKind::Erasure,
            Hop::Completed,
            id,
            self.clock.now(),
        ))
        .await
    }

    /// Counts a hop this function took (a redelivery counts it again, as the same mark).
    pub(super) async fn count(&self, mark: HopMark) -> Result<(), ErasureError> {
        Ok(hops::take(&self.store, mark).await?)
    }

    pub(super) async fn count_answer(
        &self,
        id: RequestId,
        service: &ServiceName,
    ) -> Result<(), ErasureError> {
        self.count(
            HopMark::new(RequestKind::Erasure, Hop::Answered, id, self.clock.now())
                .for_service(service),
        )
        .await
    }

    /// Moves the request on when its obligations allow: notice and erase-last release once all
    /// others are done, completion once every one is.
    pub(super) async fn advance(&self, id: RequestId, pass: Pass) -> Result<(), ErasureError> {
        let Some(mut request) = self.store.get(id).await? else {
            return Ok(());
        };
        if request.state == RequestState::Completed {
            // Run again after the completion: it may not have been counted.
            return self.count_completed(id).await;
        }
        let obligations = self.store.obligations(id).await?;
        let hash = self.subject_hash(&request);
        let mut tell = false;
        if request.state == RequestState::AwaitingConfirmations {
            if !obligations
                .iter()
                .filter(|o| !o.last)
                .all(|o| o.status.is_done())
            {
                return Ok(());
            }
            // The transition first: of two passes moving the request on at once (the fan-out's
            // commit and the last answer, which often land together), one wins and tells the
            // subject; the other stops here, and the platform hears of the notice once.
            if !self
                .move_to(&mut request, &hash, RequestState::Notifying)
                .await?
            {
                return Ok(());
            }
            tracing::info!(request_id = %id, subject = %hash, "erasure notifying; the erase-last services wait for the notice's publication");
            crate::kill_point::reached("confirm.notifying");
            tell = true;
        } else if request.state == RequestState::Notifying && pass == Pass::Again {
            // A redelivery, or the watchdog: the pass that made the transition may have failed
            // or died before the notice left. Until the broker confirmed it (its receipt sets
            // the erase-last services' release time), tell the subject again, under the same
            // message id.
            tell = !obligations.iter().any(|o| o.last && o.release_at.is_some());
        }
        if tell {
            let now = self.clock.now();
            let notice =
                DomainEvent::erasure_notice(id, hash.clone(), now + self.settings.grace, now);
            // The subject is told first (their email address is still there to tell them).
            // The erase-last services are scheduled by the notice's receipt, not here: a
            // queued notice is not a notice given.
            self.events
                .tell(&SubjectNotice::of(&notice, request.subject.clone()))
                .await?;
            self.events.publish(&notice).await?;
            crate::kill_point::reached("confirm.notice_queued");
        }
        if request.state == RequestState::Notifying
            && obligations.iter().all(|o| o.status.is_done())
        {
            // A report asked for while the erasure ran is erased too, before "completed".
            let again = self.erase_own_copies(&request).await?;
            if again.found_anything() {
                self.store
                    .record_event(
                        id,
                        &Audited::OwnCopiesErased {
                            closed: again.closed.len(),
                            objects: again.objects_deleted,
                        },
                        self.clock.now(),
                    )
                    .await?;
            }
            if !self.verifiable(&obligations) {
                return self.complete(request, &obligations, &hash).await;
            }
            // Every holder answered; what can be read is read again before "completed". The
            // transition first: of two passes, one asks.
            if !self
                .move_to(&mut request, &hash, RequestState::Verifying)
                .await?
            {
                return Ok(());
            }
            tracing::info!(request_id = %id, subject = %hash, "erasure verifying: every erased holder that can be read is read again");
            crate::kill_point::reached("confirm.verifying");
            self.checks
                .verify(&VerifyErasure::new(id, request.updated_at))
                .await?;
        } else if request.state == RequestState::Verifying && pass == Pass::Again {
            // A redelivery or the watchdog: the pass that moved it on may have died before it
            // asked. Asking again is harmless (a verification only reads; its result is for
            // this round).
            self.checks
                .verify(&VerifyErasure::new(id, request.updated_at))
                .await?;
        }
        Ok(())
    }

    /// Whether any erased holder can be read (it has a `collect` in the registry).
    fn verifiable(&self, obligations: &[super::Obligation]) -> bool {
        obligations.iter().any(|o| {
            self.registry
                .services
                .iter()
                .any(|s| s.name == o.service && s.collect.is_some() && s.erase.is_some())
        })
    }

    /// What a verification found. Nothing: the erasure is completed. Records at a holder that
    /// had answered: its obligation is open again, its command sent again under a new
    /// idempotency key (a check first, so a crash leaves it a watchdog), and the request waits
    /// in `notifying` (the subject was told already) until every holder answered again; a
    /// holder found holding data after its last allowed send is escalated.
    pub async fn verified(
        &self,
        result: &ErasureVerified,
        origin: &Origin,
    ) -> Result<Handled, ErasureError> {
        if *origin != Origin::Internal {
            return Err(ErasureError::Rejected(format!(
                "a verification result from {origin}; only the service verifies"
            )));
        }
        let mut request = self.erasure(result.request_id).await?;
        // A result of an earlier round (the request was reopened since) moves nothing.
        if request.state != RequestState::Verifying || result.requested_at < request.updated_at {
            return Ok(Handled::Nothing(Skipped::NotThisVerification));
        }
        let id = request.id;
        let hash = self.subject_hash(&request);
        let obligations = self.store.obligations(id).await?;
        let now = self.clock.now();
        if result.found.is_empty() {
            self.store
                .record_event(
                    id,
                    &Audited::VerifiedNothingLeft {
                        holders: result.checked.len(),
                    },
                    now,
                )
                .await?;
            tracing::info!(request_id = %id, holders = result.checked.len(), "erasure verified: nothing left at any holder read");
            self.complete(request, &obligations, &hash).await?;
            return Ok(Handled::Verified);
        }
        let mut again = Vec::new();
        for held in &result.found {
            let Some(o) = obligations.iter().find(|o| o.service == held.service) else {
                tracing::warn!(request_id = %id, service = %held.service, "a verification read a service this erasure has no obligation at");
                continue;
            };
            let how = self.eraser(&o.service)?;
            if o.status.is_done() {
                self.store.reopen(id, &o.service, held.records, now).await?;
                tracing::warn!(request_id = %id, service = %o.service, records = held.records, alert = "erasure_data_found_after_answer", "verification found the subject's data after the service answered; sent again");
                metrics::emit(
                    Metric::count(names::DATA_FOUND_AFTER_ANSWER, 1)
                        .with("Service", o.service.clone()),
                );
            } else if !o.reopened_unsent() {
                // Opened and sent again by an earlier delivery of this result.
                continue;
            }
            let attempt = o.attempts + 1;
            if o.attempts >= how.max_sends {
                // It keeps returning data: an operator takes over.
                if self.store.escalate(id, &o.service, o.attempts, now).await? {
                    tracing::warn!(request_id = %id, service = %o.service, alert = "erasure_obligation_escalated", "service keeps holding the subject's data after answering: escalated");
                    metrics::emit(
                        Metric::count(names::ESCALATIONS, 1).with("Service", o.service.clone()),
                    );
                }
                continue;
            }
            // The watchdog first: should this pass die after the transition, the check sends.
            let timeout = chrono::Duration::seconds(
                i64::try_from(how.confirm_within_seconds).unwrap_or(i64::MAX / 1000),
            );
            self.checks
                .schedule(&ObligationDue::new(id, &o.service, attempt), now + timeout)
                .await?;
            again.push((
                o.service.clone(),
                attempt,
                o.reopened + u32::from(o.status.is_done()),
            ));
        }
        if !self
            .move_to(&mut request, &hash, RequestState::Notifying)
            .await?
        {
            return Ok(Handled::Nothing(Skipped::NotThisVerification));
        }
        for (service, attempt, reopened) in &again {
            let how = self.eraser(service)?;
            self.send(&request, service, how, *attempt, *reopened)
                .await?;
        }
        Ok(Handled::Reopened {
            services: result.found.len(),
        })
    }

    /// Moves the request on, conditionally on the state it was read in: whether this pass did it
    /// (of two passes at once, one wins).
    async fn move_to(
        &self,
        request: &mut Request,
        hash: &crate::SubjectHash,
        to: RequestState,
    ) -> Result<bool, ErasureError> {
        let from = request.state;
        request
            .transition_to(to, self.clock.now())
            .map_err(|e| ErasureError::Rejected(e.to_string()))?;
        Ok(self.store.save_transition(request, hash, from).await? == TransitionOutcome::Applied)
    }

    /// Every holder answered and nothing is left: the platform is told, the request completed.
    async fn complete(
        &self,
        mut request: Request,
        obligations: &[super::Obligation],
        hash: &crate::SubjectHash,
    ) -> Result<(), ErasureError> {
        let id = request.id;
        {
            let now = self.clock.now();
            self.events
                .publish(&DomainEvent::erasure_completed(
                    id,
                    hash.clone(),
                    obligations.len(),
                    now,
                ))
                .await?;
            crate::kill_point::reached("confirm.completion_published");
            if self
                .move_to(&mut request, hash, RequestState::Completed)
                .await?
            {
                tracing::info!(request_id = %id, subject = %hash, services = obligations.len(), "erasure completed");
                metrics::emit(Metric::count(names::REQUESTS_COMPLETED, 1).with("Kind", "erasure"));
                self.count_completed(id).await?;
            }
        }
        Ok(())
    }
}
