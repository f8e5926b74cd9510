//! Vendors that take many subjects in one call (`batch` in the registry): their commands wait
//! on the vendor-erasures queue and leave together, and what the vendor says of each subject
//! is recorded as if it had been called for that subject alone.

use super::*;
use crate::hops::{Hop, HopMark};
use crate::registry::ErasureRoute;
use std::collections::BTreeMap;

impl<S, X, D, E, C, R> Erasures<S, X, D, E, C, R>
where
    S: RequestStore + ObligationStore,
    X: ErasureChannel,
    D: CheckScheduler,
    E: EventOutbox,
    C: Clock,
    R: ReportStore,
{
    /// Sends waiting commands in as few calls as their vendors take (grouped by vendor, at most
    /// its `max_subjects` per call): one result per command, in the order given. A command
    /// that fails alone (the call failed, or its vendor said nothing of it) is an error worth
    /// retrying; the others' answers are recorded all the same.
    pub async fn erase_in_batches(
        &self,
        commands: &[ErasureCommand],
    ) -> Vec<Result<Handled, ErasureError>> {
        let mut results: Vec<Option<Result<Handled, ErasureError>>> =
            commands.iter().map(|_| None).collect();
        let mut requests: Vec<Option<Request>> = commands.iter().map(|_| None).collect();
        let mut by_vendor: BTreeMap<&ServiceName, (&HowToErase, Vec<usize>)> = BTreeMap::new();
        for (i, command) in commands.iter().enumerate() {
            match self.batchable(command).await {
                Ok(Some((request, how))) => {
                    requests[i] = Some(request);
                    by_vendor
                        .entry(&command.service)
                        .or_insert_with(|| (how, Vec::new()))
                        .1
                        .push(i);
                }
                Ok(None) => results[i] = Some(Ok(Handled::Nothing(Skipped::RequestFinished))),
                Err(err) => results[i] = Some(Err(err)),
            }
        }
        for (how, waiting) in by_vendor.into_values() {
            let size = match &how.via {
                ErasureRoute::Http {
                    batch: Some(batch), ..
                } => batch.max_subjects,
                _ => 1,
            };
            for call in waiting.chunks(usize::try_from(size.max(1)).unwrap_or(1)) {
                let batch: Vec<ErasureCommand> =
                    call.iter().map(|&i| commands[i].clone()).collect();
                let deliveries = match self.channel.send_batch(&batch, how).await {
                    Ok(deliveries) => deliveries,
                    Err(err) => {
                        let reason = err.to_string();
                        vec![Delivery::Failed(reason); batch.len()]
                    }
                };
                let mut deliveries = deliveries.into_iter();
                for &i in call {
                    let delivery = deliveries.next().unwrap_or_else(|| {
                        Delivery::Failed("the batch call answered nothing for it".into())
                    });
                    results[i] = Some(match requests[i].take() {
                        Some(request) => {
                            self.batch_answered(&request, &commands[i], how, delivery)
                                .await
                        }
                        None => Err(ErasureError::Rejected("not a batched command".into())),
                    });
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(ErasureError::Rejected("not handled".into()))))
            .collect()
    }

    /// The command's request, if it is one to send now; a command that could never be sent
    /// (no such vendor or request, a subject that is not the request's) is rejected: only this
    /// service's functions write the queue, so one such is a bug or a forgery, and a vendor is
    /// never asked to erase someone on its word alone.
    async fn batchable(
        &self,
        command: &ErasureCommand,
    ) -> Result<Option<(Request, &HowToErase)>, ErasureError> {
        let how = self.eraser(&command.service)?;
        if !matches!(how.via, ErasureRoute::Http { batch: Some(_), .. }) {
            return Err(ErasureError::Rejected(format!(
                "service `{}` takes no batches (registry)",
                command.service
            )));
        }
        let request = self.erasure(command.request_id).await?;
        // The subject as this vendor knows them (its identifiers kept on the request).
        let expected = self.holder_identity(&request, &command.service).ok();
        if expected.is_none_or(|who| {
            who.subject != command.subject || who.identifiers != command.identifiers
        }) {
            return Err(ErasureError::Rejected(format!(
                "the command's subject is not request {}'s",
                request.id
            )));
        }
        if request.state.is_terminal() {
            return Ok(None);
        }
        Ok(Some((request, how)))
    }

    /// What the vendor said of one subject of a batch call.
    async fn batch_answered(
        &self,
        request: &Request,
        command: &ErasureCommand,
        how: &HowToErase,
        delivery: Delivery,
    ) -> Result<Handled, ErasureError> {
        let service = &command.service;
        tracing::info!(
            request_id = %request.id,
            subject = %self.subject_hash(request),
            service = %service,
            attempt = command.attempt,
            outcome = match &delivery {
                Delivery::Answered { status, .. } => status.as_str(),
                Delivery::Deferred { .. } => "deferred",
                Delivery::Failed(_) | Delivery::Sent => "failed",
            },
            error = match &delivery {
                Delivery::Failed(reason) | Delivery::Deferred { reason, .. } => reason.as_str(),
                _ => "",
            },
            "erasure command in a batch call"
        );
        match delivery {
            Delivery::Answered { status, receipt } => {
                self.count(
                    HopMark::new(
                        RequestKind::Erasure,
                        Hop::Commanded,
                        request.id,
                        self.clock.now(),
                    )
                    .for_service(service),
                )
                .await?;
                self.answer(request, service, status, &receipt).await
            }
            Delivery::Deferred { after, .. } => {
                self.defer(request.id, service, how, command.attempt, after)
                    .await?;
                Ok(Handled::Deferred)
            }
            Delivery::Failed(reason) => Err(ErasureError::Channel(ChannelError(reason.into()))),
            Delivery::Sent => Err(ErasureError::Channel(ChannelError(
                "the batch call answered nothing for it".into(),
            ))),
        }
    }
}
