//! The erasure function's part: plan one obligation per service, send each its command, and
//! wait for confirmations.

use super::*;
use crate::hops::{Hop, HopMark};
use crate::lease::{Committed, Taken};
use crate::metrics::{self, names, Metric};

impl<S, X, D, E, C, R> Erasures<S, X, D, E, C, R>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    /// The erasure function: plan, send, and wait for confirmations. A duplicate message finds
    /// the request past `received` and does nothing.
    pub async fn fan_out(&self, id: RequestId) -> Result<Handled, ErasureError> {
        let lease = match self
            .worker
            .take(
                &self.store,
                &self.clock,
                &self.hasher,
                id,
                RequestState::FanningOut,
            )
            .await?
        {
            Taken::Ours(lease) => lease,
            Taken::Busy { until } => {
                return Err(ErasureError::Busy {
                    id,
                    lease_left: Some(until - self.clock.now()),
                })
            }
            Taken::NotWorkable(None) => {
                // Requests are never deleted: a work message for an unknown one is bogus.
                return Err(ErasureError::Rejected(format!("unknown request {id}")));
            }
            Taken::NotWorkable(state) => {
                // A redelivery after the fan-out committed but failed to move on (every
                // answer may already be in): moving on is keyed, so it is run again.
                if matches!(
                    state,
                    Some(
                        RequestState::AwaitingConfirmations
                            | RequestState::Notifying
                            | RequestState::Verifying
                    )
                ) {
                    self.advance(id, Pass::Again).await?;
                }
                return Ok(Handled::Nothing(Skipped::NotWaitingForFanOut));
            }
        };
        match self.send_all(lease.request(), lease.token()).await {
            Ok(commands) => {
                match lease
                    .commit(
                        RequestState::AwaitingConfirmations,
                        self.clock.now(),
                        |_| {},
                    )
                    .await?
                {
                    Committed::Applied(_) => {
                        crate::kill_point::reached("erasure.fanned_out");
                        self.advance(id, Pass::First).await?;
                        Ok(Handled::FannedOut { commands })
                    }
                    Committed::FencedOut => Ok(Handled::Nothing(Skipped::FencedOut)),
                    Committed::Illegal(illegal) => Err(ErasureError::Rejected(illegal.to_string())),
                }
            }
            Err(err) => {
                // Commands may have left and the service's own copies are gone: the request
                // stays `fanning_out` (never back to `received`, where the subject could
                // cancel it), released for the next delivery of the message, which skips what
                // was recorded as sent. The error stays on the request.
                // Tried a few times: a lease left behind holds every other worker off until it
                // runs out.
                let (now, error) = (self.clock.now(), err.to_string());
                if let Err(release) = crate::lease::thrice(|| lease.release(&error, now)).await {
                    tracing::warn!(request_id = %id, error = %release, "could not give up the lease; it runs out by itself");
                }
                Err(err)
            }
        }
    }

    async fn send_all(&self, request: &Request, token: u64) -> Result<usize, ErasureError> {
        // The platform hears of the request from here, not from the submit path; a redelivery
        // says it again under the same message id.
        self.events
            .publish(&crate::messages::DomainEvent::request_submitted(
                request,
                self.hasher.hash(&request.subject),
                request.received_at,
            ))
            .await?;
        // Who the subject is at each holder, looked up once for the whole erasure (its
        // re-sends, verification and release use what is kept on the request).
        let identities = crate::identity::resolve_once(
            &self.store,
            &self.registry,
            self.identities.as_ref(),
            &self.hasher,
            request,
            token,
            self.clock.now(),
        )
        .await
        .map_err(|e| match e {
            crate::identity::ResolveError::Store(e) => ErasureError::Store(e),
            e => ErasureError::Identities(e.to_string()),
        })?;
        let request = &Request {
            identities,
            ..request.clone()
        };
        // The service's own copies first: no new report of the subject is made from here on.
        let planned: Vec<Obligation> =
            std::iter::once(Obligation::planned(request.id, &Self::own_copies(), false))
                .chain(
                    self.registry.erasable().map(|(service, how)| {
                        Obligation::planned(request.id, &service.name, how.last)
                    }),
                )
                .collect();
        let mut commands = 0;
        let plan = self.store.plan(request.id, &planned, token).await?;
        for obligation in &plan {
            self.count(
                HopMark::new(
                    RequestKind::Erasure,
                    Hop::FannedOut,
                    request.id,
                    self.clock.now(),
                )
                .for_service(&obligation.service)
                .erased_last(obligation.last),
            )
            .await?;
        }
        for obligation in plan {
            if obligation.status.is_done() {
                // A retry after the answer was recorded but perhaps not counted.
                self.count_answer(request.id, &obligation.service).await?;
            }
            if obligation.service.as_str() == OWN_COPIES {
                if !obligation.status.is_done() {
                    let erased = self.erase_own_copies(request).await?;
                    let now = self.clock.now();
                    self.store
                        .record_send(
                            request.id,
                            &obligation.service,
                            1,
                            ObligationStatus::Sent,
                            None,
                            now,
                        )
                        .await?;
                    self.count(
                        HopMark::new(RequestKind::Erasure, Hop::Commanded, request.id, now)
                            .for_service(&obligation.service),
                    )
                    .await?;
                    self.answer(
                        request,
                        &obligation.service,
                        ObligationStatus::Confirmed,
                        &erased.receipt(),
                    )
                    .await?;
                }
                continue;
            }
            // A retry after a crash: what was sent is not sent again; the watchdog covers it.
            if obligation.last || obligation.attempts > 0 || obligation.status.is_done() {
                continue;
            }
            let how = self.eraser(&obligation.service)?;
            self.send(request, &obligation.service, how, 1, obligation.reopened)
                .await?;
            commands += 1;
        }
        Ok(commands)
    }

    /// Send number `attempt` of one obligation (opened again `reopened` times: its command's
    /// idempotency key says so). The check is scheduled before the command leaves, so a crash
    /// after sending can never leave an obligation without a watchdog.
    pub(super) async fn send(
        &self,
        request: &Request,
        service: &ServiceName,
        how: &HowToErase,
        attempt: u32,
        reopened: u32,
    ) -> Result<(), ErasureError> {
        let now = self.clock.now();
        let identity = match self.holder_identity(request, service) {
            Ok(identity) => Ok(identity),
            Err(Unaskable::NotApplicable(reason)) => {
                // Nothing to send: decided here, counted as commanded and answered at once.
                self.store
                    .record_send(
                        request.id,
                        service,
                        attempt,
                        ObligationStatus::Sent,
                        None,
                        now,
                    )
                    .await?;
                self.count(
                    HopMark::new(RequestKind::Erasure, Hop::Commanded, request.id, now)
                        .for_service(service),
                )
                .await?;
                tracing::info!(request_id = %request.id, service = %service, reason = %reason, "holder not applicable");
                let receipt = serde_json::json!({ "not_applicable": reason }).to_string();
                self.answer(request, service, ObligationStatus::NotApplicable, &receipt)
                    .await?;
                return Ok(());
            }
            Err(Unaskable::Unresolved(reason)) => Err(reason),
        };
        let timeout = chrono::Duration::seconds(
            i64::try_from(how.confirm_within_seconds).unwrap_or(i64::MAX / 1000),
        );
        self.checks
            .schedule(
                &ObligationDue::new(request.id, service, attempt),
                now + timeout,
            )
            .await?;
        let delivery = match identity {
            Ok(identity) => {
                let command =
                    ErasureCommand::new(request, service, identity, attempt, reopened, now);
                self.channel.send(&command, how).await?
            }
            // Failed like a send: the watchdog tries again, then escalates to an operator.
            Err(reason) => Delivery::Failed(reason),
        };
        crate::kill_point::reached("erasure.command_sent");
        let (status, error) = match &delivery {
            Delivery::Sent | Delivery::Answered { .. } => (ObligationStatus::Sent, None),
            Delivery::Failed(reason) | Delivery::Deferred { reason, .. } => {
                (ObligationStatus::Failed, Some(reason.as_str()))
            }
        };
        self.store
            .record_send(request.id, service, attempt, status, error, now)
            .await?;
        if let Delivery::Deferred { after, .. } = &delivery {
            self.defer(request.id, service, how, attempt, *after)
                .await?;
        }
        tracing::info!(
            request_id = %request.id,
            subject = %self.hasher.hash(&request.subject),
            service = %service,
            attempt,
            outcome = match &delivery {
                Delivery::Sent => "sent",
                Delivery::Answered { .. } => "answered",
                Delivery::Failed(_) => "failed",
                Delivery::Deferred { .. } => "deferred",
            },
            error = error.unwrap_or_default(),
            "erasure command"
        );
        if let Delivery::Answered { status, receipt } = delivery {
            // A vendor's API took the command and answered at once: both hops are this
            // function's (a command to a RabbitMQ service is counted by the bridge).
            self.count(
                HopMark::new(RequestKind::Erasure, Hop::Commanded, request.id, now)
                    .for_service(service),
            )
            .await?;
            self.answer(request, service, status, &receipt).await?;
        }
        Ok(())
    }

    /// The subject as `service` knows them, from the identities kept on the request.
    pub(super) fn holder_identity(
        &self,
        request: &Request,
        service: &ServiceName,
    ) -> Result<crate::identity::HolderIdentity, Unaskable> {
        let holder = self.registry.service(service).ok_or_else(|| {
            Unaskable::Unresolved(format!(
                "service `{service}` is not in the registry (any more)"
            ))
        })?;
        crate::identity::Identities::for_holder(
            request.identities.as_ref(),
            &request.subject,
            holder,
        )
        .map_err(|missing| {
            if request.identities.is_none() {
                // The registry asked for no identifier when this request was fanned out.
                Unaskable::Unresolved(format!(
                    "the subject's identifiers were not looked up for this request ({} is needed now)",
                    missing.missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                ))
            } else {
                Unaskable::NotApplicable(missing.reason())
            }
        })
    }

    /// A vendor said "not now" to send number `attempt`: the same check, moved from the end of
    /// the confirmation time to when the vendor said it would take the call (never later than
    /// the check was due anyway).
    pub(super) async fn defer(
        &self,
        request_id: RequestId,
        service: &ServiceName,
        how: &HowToErase,
        attempt: u32,
        after: std::time::Duration,
    ) -> Result<(), ErasureError> {
        let timeout = chrono::Duration::seconds(
            i64::try_from(how.confirm_within_seconds).unwrap_or(i64::MAX / 1000),
        );
        let after = chrono::Duration::from_std(after)
            .unwrap_or(timeout)
            .clamp(chrono::Duration::seconds(1), timeout);
        self.checks
            .schedule(
                &ObligationDue::new(request_id, service, attempt),
                self.clock.now() + after,
            )
            .await?;
        metrics::emit(Metric::count(names::VENDOR_DEFERRALS, 1).with("Service", service.clone()));
        Ok(())
    }
}
