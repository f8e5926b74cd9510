// The service's resources as a CDK stack: the same tables, queues, functions, policies, alarms
// and dashboard as template.yaml, under the same logical ids (a stack can move from one tool to
// the other, and the drift test compares the two resource by resource: infra/cdk/drift.py).
// A change to template.yaml needs the same change here; `make test` fails until it is made.
import * as fs from "node:fs";
import * as path from "node:path";
import {
  Aws,
  CfnCondition,
  CfnOutput,
  CfnParameter,
  CfnResource,
  Duration,
  Fn,
  RemovalPolicy,
  Size,
  Stack,
  StackProps,
  Token,
  Validations,
} from "aws-cdk-lib";
import * as apigw from "aws-cdk-lib/aws-apigatewayv2";
import { HttpJwtAuthorizer } from "aws-cdk-lib/aws-apigatewayv2-authorizers";
import { HttpLambdaIntegration } from "aws-cdk-lib/aws-apigatewayv2-integrations";
import * as cloudwatch from "aws-cdk-lib/aws-cloudwatch";
import * as dynamodb from "aws-cdk-lib/aws-dynamodb";
import * as iam from "aws-cdk-lib/aws-iam";
import * as lambda from "aws-cdk-lib/aws-lambda";
import * as logs from "aws-cdk-lib/aws-logs";
import * as s3 from "aws-cdk-lib/aws-s3";
import * as scheduler from "aws-cdk-lib/aws-scheduler";
import * as sqs from "aws-cdk-lib/aws-sqs";
import { Construct } from "constructs";

export interface DsrStackProps extends StackProps {
  /** Where `make package` left the functions: `<artifacts>/<binary>/bootstrap`. */
  readonly artifacts: string;
}

/** Names a construct's CloudFormation resource as template.yaml does. */
function logicalId(construct: Construct, id: string): void {
  (construct.node.defaultChild as CfnResource).overrideLogicalId(id);
}

const TWO_WEEKS = Duration.days(14);

export class DsrStack extends Stack {
  constructor(scope: Construct, id: string, props: DsrStackProps) {
    super(scope, id, props);
    // CDK's template validation reads an empty parameter default as the value every resource
    // gets; these are used only under the conditions that say they are set (an alarm topic, an
    // Amazon MQ broker), and the secrets are names of parameters, not secrets.
    for (const [check, why] of [
      ["CloudFormation-Validate::W1030", "empty defaults are used only under the conditions that test for them"],
      ["CloudFormation-Validate::W2509", "parameter paths and secret ARNs are names, not secrets"],
    ]) {
      Validations.of(this).acknowledge({ id: check, reason: why });
    }

    // ------------------------------------------------------------ parameters
    const p = (name: string, options: ConstructorParameters<typeof CfnParameter>[2]) =>
      new CfnParameter(this, name, options);
    const jwtIssuer = p("JwtIssuer", {
      type: "String",
      description: "Issuer (iss) of the user tokens the HTTP API accepts, e.g. your Cognito user pool URL.",
    });
    const jwtAudience = p("JwtAudience", {
      type: "String",
      description: "Audience (aud) the user tokens must carry.",
    });
    const secretsPath = p("SecretsPath", {
      type: "String",
      default: "/gdpr-dsr",
      allowedPattern: "^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
      description:
        "SSM Parameter Store path of the service's secrets (SecureString): <path>/subject-hash-key, " +
        "<path>/rabbitmq-url, <path>/certificate-signing-key, and vendors' tokens as <path>/<name>.",
    });
    const reportRetentionDays = p("ReportRetentionDays", {
      type: "Number",
      default: 30,
      minValue: 1,
      description: "Days a generated report stays downloadable before it expires.",
    });
    const rabbitMqNamespace = p("RabbitMqNamespace", {
      type: "String",
      default: "gdpr",
      allowedPattern: "[a-z0-9][a-z0-9.-]*",
      description: "Prefix of every RabbitMQ name the service uses.",
    });
    const rabbitMqBrokerArn = p("RabbitMqBrokerArn", {
      type: "String",
      default: "",
      description:
        "ARN of the Amazon MQ for RabbitMQ broker the inbound bridge consumes from. Empty: no inbound Lambda.",
    });
    const rabbitMqCredentialsSecretArn = p("RabbitMqCredentialsSecretArn", {
      type: "String",
      default: "",
      description: 'Secrets Manager secret ({"username","password"}) for the broker\'s event source.',
    });
    const delayedDispatchCallers = p("DelayedDispatchCallers", {
      type: "String",
      default: "",
      description: "Platform services allowed to use delayed dispatch over RabbitMQ (YAML or JSON).",
    });
    const requestSubmitters = p("RequestSubmitters", {
      type: "String",
      default: "",
      allowedPattern: "[A-Za-z0-9@._:+/#, -]*",
      description:
        "Broker users of the internal systems allowed to submit requests on a subject's behalf (submit_request on <ns>.requests), comma separated.",
    });
    const erasureGraceSeconds = p("ErasureGraceSeconds", {
      type: "Number",
      default: 259200,
      minValue: 0,
      description: "Time between the erasure notice and the erasure of the erase-last services.",
    });
    const reportUrlTtlSeconds = p("ReportUrlTtlSeconds", {
      type: "Number",
      default: 900,
      minValue: 1,
      maxValue: 604800,
      description: "How long a report download link stays valid.",
    });
    const reportMaxAttempts = p("ReportMaxAttempts", {
      type: "Number",
      default: 5,
      minValue: 1,
      description:
        "Attempts at one source of a report (unless its registry entry says otherwise) before it fails for good and the request with it.",
    });
    const deadlineWarningDays = p("DeadlineWarningDays", {
      type: "Number",
      default: 7,
      minValue: 1,
      description: "An open request this many days from its legal deadline raises the deadline-at-risk alarm.",
    });
    const alarmTopicArn = p("AlarmTopicArn", {
      type: "String",
      default: "",
      description: "SNS topic the alarms notify (empty - alarms without actions).",
    });
    const requestRetentionDays = p("RequestRetentionDays", {
      type: "Number",
      default: 90,
      minValue: 1,
      description: "Days a finished request keeps the raw subject id.",
    });
    const accessRequestsPerDay = p("AccessRequestsPerDay", {
      type: "Number",
      default: 5,
      minValue: 1,
      description: "Access requests one subject may start per 24 hours.",
    });
    const logRetentionDays = p("LogRetentionDays", {
      type: "Number",
      default: 30,
      allowedValues: [
        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
        3288, 3653,
      ].map(String),
      description: "Days the functions' logs are kept.",
    });
    const sweepStaleAfterSeconds = p("SweepStaleAfterSeconds", {
      type: "Number",
      default: 1800,
      description: 'A request still "received" this long after its message was sent is sent again.',
    });

    const hasAmazonMqBroker = new CfnCondition(this, "HasAmazonMqBroker", {
      expression: Fn.conditionNot(Fn.conditionEquals(rabbitMqBrokerArn.valueAsString, "")),
    });
    const hasAlarmTopic = new CfnCondition(this, "HasAlarmTopic", {
      expression: Fn.conditionNot(Fn.conditionEquals(alarmTopicArn.valueAsString, "")),
    });
    const metricsNamespace = Fn.sub("GdprDsr/${AWS::StackName}");
    const secret = (name: string) => `${secretsPath.valueAsString}/${name}`;
    const ns = (suffix: string) => `${rabbitMqNamespace.valueAsString}.${suffix}`;

    // ------------------------------------------------------------ storage
    const requestsTable = new dynamodb.Table(this, "RequestsTable", {
      partitionKey: { name: "pk", type: dynamodb.AttributeType.STRING },
      sortKey: { name: "sk", type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: "expires_at",
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      removalPolicy: RemovalPolicy.RETAIN,
    });
    requestsTable.addGlobalSecondaryIndex({
      indexName: "BySubject",
      partitionKey: { name: "subject_hash", type: dynamodb.AttributeType.STRING },
      sortKey: { name: "id", type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });
    requestsTable.addGlobalSecondaryIndex({
      indexName: "ByStateDue",
      partitionKey: { name: "state", type: dynamodb.AttributeType.STRING },
      sortKey: { name: "due_at", type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });

    // The hop log: each function counts the hops it takes (docs/operations.md).
    const hopsTable = new dynamodb.Table(this, "HopsTable", {
      partitionKey: { name: "pk", type: dynamodb.AttributeType.STRING },
      sortKey: { name: "sk", type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: "expires_at",
      removalPolicy: RemovalPolicy.DESTROY,
    });

    const delayedMessagesTable = new dynamodb.Table(this, "DelayedMessagesTable", {
      partitionKey: { name: "key", type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: "expires_at",
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      removalPolicy: RemovalPolicy.DESTROY,
    });
    delayedMessagesTable.addGlobalSecondaryIndex({
      indexName: "ByStatusDue",
      partitionKey: { name: "status", type: dynamodb.AttributeType.STRING },
      sortKey: { name: "deliver_at", type: dynamodb.AttributeType.STRING },
      projectionType: dynamodb.ProjectionType.ALL,
    });
    for (const [table, id] of [
      [requestsTable, "RequestsTable"],
      [hopsTable, "HopsTable"],
      [delayedMessagesTable, "DelayedMessagesTable"],
    ] as const) {
      logicalId(table, id);
      // Encrypted with the account's AWS-managed key (aws/dynamodb), as template.yaml has it.
      (table.node.defaultChild as dynamodb.CfnTable).sseSpecification = { sseEnabled: true };
    }

    const reportsBucket = new s3.Bucket(this, "ReportsBucket", {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy: RemovalPolicy.DESTROY,
      lifecycleRules: [
        {
          id: "expire-reports",
          prefix: "reports/",
          expiration: Duration.days(reportRetentionDays.valueAsNumber),
        },
        // Sources staged while a report is collected (removed once it is made or failed; this
        // is the backstop): a deadline is at most three months after receipt.
        { id: "expire-staged-sources", prefix: "staging/", expiration: Duration.days(100) },
        // Parts of uploads that a crashed worker never finished.
        { id: "abort-unfinished-uploads", abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
    });
    logicalId(reportsBucket, "ReportsBucket");
    // Reports are personal data: nobody reads or writes them over plain HTTP.
    new s3.CfnBucketPolicy(this, "ReportsBucketPolicy", {
      bucket: reportsBucket.bucketName,
      policyDocument: {
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "DenyInsecureTransport",
            Effect: "Deny",
            Principal: "*",
            Action: "s3:*",
            Resource: [reportsBucket.bucketArn, `${reportsBucket.bucketArn}/*`],
            Condition: { Bool: { "aws:SecureTransport": "false" } },
          },
        ],
      },
    });

    // ------------------------------------------------------------ queues
    // Visibility timeouts are six times the consumer's timeout (AWS's rule for event source
    // mappings); after maxReceiveCount failed deliveries a message moves to its dead letters.
    const deadLetters = (id: string) => {
      const queue = new sqs.Queue(this, id, {
        retentionPeriod: TWO_WEEKS,
        encryption: sqs.QueueEncryption.SQS_MANAGED,
      });
      logicalId(queue, id);
      return queue;
    };
    const workQueue = (id: string, visibilitySeconds: number, dlq: sqs.Queue, maxReceiveCount: number) => {
      const queue = new sqs.Queue(this, id, {
        visibilityTimeout: Duration.seconds(visibilitySeconds),
        retentionPeriod: TWO_WEEKS,
        encryption: sqs.QueueEncryption.SQS_MANAGED,
        deadLetterQueue: { queue: dlq, maxReceiveCount },
      });
      logicalId(queue, id);
      return queue;
    };
    const accessRequestsDlq = deadLetters("AccessRequestsDeadLetterQueue");
    const accessRequestsQueue = workQueue("AccessRequestsQueue", 5400, accessRequestsDlq, 5);
    const erasureRequestsDlq = deadLetters("ErasureRequestsDeadLetterQueue");
    const erasureRequestsQueue = workQueue("ErasureRequestsQueue", 360, erasureRequestsDlq, 5);
    // Erase commands to vendors that take many subjects per call, gathered by the erasure function.
    const vendorErasuresDlq = deadLetters("VendorErasuresDeadLetterQueue");
    const vendorErasuresQueue = workQueue("VendorErasuresQueue", 360, vendorErasuresDlq, 5);
    const outboundDlq = deadLetters("OutboundDeadLetterQueue");
    const outboundQueue = workQueue("OutboundQueue", 120, outboundDlq, 5);
    const confirmationsDlq = deadLetters("ConfirmationsDeadLetterQueue");
    const confirmationsQueue = workQueue("ConfirmationsQueue", 360, confirmationsDlq, 5);
    // Other systems' submit_requests (from RabbitMQ through the bridge).
    const submissionsDlq = deadLetters("SubmissionsDeadLetterQueue");
    const submissionsQueue = workQueue("SubmissionsQueue", 180, submissionsDlq, 5);
    const scheduleRequestsDlq = deadLetters("ScheduleRequestsDeadLetterQueue");
    const scheduleRequestsQueue = workQueue("ScheduleRequestsQueue", 1800, scheduleRequestsDlq, 3);
    const dispatchDlq = deadLetters("DispatchDeadLetterQueue");
    const sweepScheduleDlq = deadLetters("SweepScheduleDeadLetterQueue");

    const dispatchScheduleGroup = new scheduler.CfnScheduleGroup(this, "DispatchScheduleGroup", {
      name: `${Aws.STACK_NAME}-delays`,
    });
    const dispatchFunctionName = `${Aws.STACK_NAME}-dispatch`;
    const dispatchFunctionArn = `arn:${Aws.PARTITION}:lambda:${Aws.REGION}:${Aws.ACCOUNT_ID}:function:${dispatchFunctionName}`;
    // Assumed by EventBridge Scheduler to run the one-time wake-ups.
    const dispatchSchedulerRole = new iam.Role(this, "DispatchSchedulerRole", {
      assumedBy: new iam.ServicePrincipal("scheduler.amazonaws.com"),
      inlinePolicies: {
        "wake-dispatch": new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({ actions: ["lambda:InvokeFunction"], resources: [dispatchFunctionArn] }),
            new iam.PolicyStatement({ actions: ["sqs:SendMessage"], resources: [dispatchDlq.queueArn] }),
          ],
        }),
      },
    });
    logicalId(dispatchSchedulerRole, "DispatchSchedulerRole");

    // ------------------------------------------------------------ functions
    const fns = new Functions(this, props.artifacts, metricsNamespace);
    const secretsStatement = new iam.PolicyStatement({
      actions: ["ssm:GetParameters"],
      resources: [`arn:${Aws.PARTITION}:ssm:${Aws.REGION}:${Aws.ACCOUNT_ID}:parameter${secretsPath.valueAsString}/*`],
    });
    const hopsStatement = new iam.PolicyStatement({
      actions: ["dynamodb:UpdateItem", "dynamodb:PutItem"],
      resources: [hopsTable.tableArn],
    });
    const allow = (actions: string[], resources: string[]) => new iam.PolicyStatement({ actions, resources });
    const requestsIndexes = `${requestsTable.tableArn}/index/*`;
    const reportObjects = `${reportsBucket.bucketArn}/reports/*`;
    // Sources staged while a report is collected.
    const stagedObjects = `${reportsBucket.bucketArn}/staging/*`;
    const queueUrls = {
      ACCESS_REQUESTS_QUEUE_URL: accessRequestsQueue.queueUrl,
      ERASURE_REQUESTS_QUEUE_URL: erasureRequestsQueue.queueUrl,
    };

    const intake = fns.add("IntakeFunction", {
      binary: "intake",
      description: "User API - submit, list, show and cancel data subject requests.",
      environment: {
        REQUESTS_TABLE: requestsTable.tableName,
        HOPS_TABLE: hopsTable.tableName,
        ...queueUrls,
        SUBJECT_HASH_KEY_PARAMETER: secret("subject-hash-key"),
        CERTIFICATE_SIGNING_KEY_PARAMETER: secret("certificate-signing-key"),
        OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
        REPORTS_BUCKET: reportsBucket.bucketName,
        REPORT_URL_TTL_SECONDS: reportUrlTtlSeconds.valueAsString,
        ACCESS_REQUESTS_PER_DAY: accessRequestsPerDay.valueAsString,
      },
      statements: [
        hopsStatement,
        secretsStatement,
        allow(
          [
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:Query",
          ],
          [requestsTable.tableArn, requestsIndexes],
        ),
        allow(["sqs:SendMessage"], [accessRequestsQueue.queueArn, erasureRequestsQueue.queueArn, outboundQueue.queueArn]),
        // Presigned download links are signed with this function's credentials.
        allow(["s3:GetObject"], [reportObjects]),
      ],
    });

    const submissions = fns.add("SubmissionsFunction", {
      binary: "submissions",
      description:
        "Requests from other internal systems - submit_request over RabbitMQ, from the allowed broker users.",
      timeout: 30,
      environment: {
        REQUESTS_TABLE: requestsTable.tableName,
        HOPS_TABLE: hopsTable.tableName,
        ...queueUrls,
        SUBJECT_HASH_KEY_PARAMETER: secret("subject-hash-key"),
        ACCESS_REQUESTS_PER_DAY: accessRequestsPerDay.valueAsString,
        SUBMISSIONS_QUEUE_URL: submissionsQueue.queueUrl,
        DEAD_LETTER_QUEUE_URL: submissionsDlq.queueUrl,
        REQUEST_SUBMITTERS: requestSubmitters.valueAsString,
      },
      statements: [
        hopsStatement,
        secretsStatement,
        allow(
          [
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:ConditionCheckItem",
            "dynamodb:Query",
          ],
          [requestsTable.tableArn, requestsIndexes],
        ),
        allow(["sqs:SendMessage"], [accessRequestsQueue.queueArn, erasureRequestsQueue.queueArn, submissionsDlq.queueArn]),
      ],
      queues: [{ id: "Submissions", queue: submissionsQueue, batchSize: 10 }],
    });

    const deadLetterQueues = Fn.sub(
      "AccessRequests=${AccessRequestsDeadLetterQueue} ErasureRequests=${ErasureRequestsDeadLetterQueue} " +
        "VendorErasures=${VendorErasuresDeadLetterQueue} " +
        "Outbound=${OutboundDeadLetterQueue} Confirmations=${ConfirmationsDeadLetterQueue} " +
        "Submissions=${SubmissionsDeadLetterQueue} " +
        "ScheduleRequests=${ScheduleRequestsDeadLetterQueue} Dispatch=${DispatchDeadLetterQueue} " +
        "SweepSchedule=${SweepScheduleDeadLetterQueue}",
    );
    const opsPage = fns.add("OpsPageFunction", {
      binary: "ops-page",
      description:
        "The operations page - hops in sync, open requests, dead letters, escalations, a request's timeline.",
      timeout: 29,
      memorySize: 256,
      environment: {
        REQUESTS_TABLE: requestsTable.tableName,
        HOPS_TABLE: hopsTable.tableName,
        STACK_NAME: Aws.STACK_NAME,
        DEADLINE_WARNING_DAYS: deadlineWarningDays.valueAsString,
        ERASURE_GRACE_SECONDS: erasureGraceSeconds.valueAsString,
        DEAD_LETTER_QUEUES: deadLetterQueues,
        // Operators' decisions (resend, resolve) go to the confirm function.
        CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
      },
      statements: [
        // Read only: requests, their audit trails and obligations, and the hops.
        allow(["dynamodb:GetItem", "dynamodb:Query"], [requestsTable.tableArn, requestsIndexes, hopsTable.tableArn]),
        // The one write: an operator's decision, carried out by the confirm function.
        allow(["sqs:SendMessage"], [confirmationsQueue.queueArn]),
        allow(
          ["sqs:GetQueueAttributes"],
          [accessRequestsDlq, erasureRequestsDlq, vendorErasuresDlq, outboundDlq, confirmationsDlq, submissionsDlq, scheduleRequestsDlq, dispatchDlq, sweepScheduleDlq].map(
            (q) => q.queueArn,
          ),
        ),
      ],
    });

    const report = fns.add("ReportFunction", {
      binary: "report",
      description: "Collects a subject's data from every registered source into a downloadable report.",
      // Reports may take long; the lease (REPORT_LEASE_SECONDS) outlasts this timeout.
      timeout: 900,
      memorySize: 512,
      ephemeralStorageMiB: 10240,
      environment: {
        REQUESTS_TABLE: requestsTable.tableName,
        HOPS_TABLE: hopsTable.tableName,
        ...queueUrls,
        DEAD_LETTER_QUEUE_URL: accessRequestsDlq.queueUrl,
        OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
        // What an erasure's verification found goes to the confirm function.
        CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
        COMMANDS_EXCHANGE: ns("commands"),
        REPORTS_BUCKET: reportsBucket.bucketName,
        SUBJECT_HASH_KEY_PARAMETER: secret("subject-hash-key"),
        REPORT_RETENTION_DAYS: reportRetentionDays.valueAsString,
        REPORT_LEASE_SECONDS: "960",
        REPORT_MAX_ATTEMPTS: reportMaxAttempts.valueAsString,
        // One invocation collects this long, then hands the rest on through delayed dispatch
        // (the schedule-requests queue), to be delivered back to access-requests.
        REPORT_TIME_BUDGET_SECONDS: "600",
        SCHEDULE_REQUESTS_QUEUE_URL: scheduleRequestsQueue.queueUrl,
      },
      statements: [
        hopsStatement,
        secretsStatement,
        allow(
          ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"],
          [requestsTable.tableArn],
        ),
        allow(
          ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
          [reportObjects, stagedObjects],
        ),
        allow(["s3:ListBucket", "s3:ListBucketMultipartUploads"], [reportsBucket.bucketArn]),
        allow(
          ["sqs:SendMessage"],
          [outboundQueue.queueArn, accessRequestsDlq.queueArn, confirmationsQueue.queueArn, scheduleRequestsQueue.queueArn],
        ),
        allow(["sqs:ChangeMessageVisibility"], [accessRequestsQueue.queueArn]),
        // Read access to the registry's sources is granted per platform: add statements here.
      ],
      // One report per invocation: each holds a lease and local staging space.
      queues: [{ id: "AccessRequests", queue: accessRequestsQueue, batchSize: 1 }],
    });

    const erasureStatements = (dlq: sqs.Queue) => [
      hopsStatement,
      secretsStatement,
      allow(
        [
          "dynamodb:GetItem",
          "dynamodb:PutItem",
          "dynamodb:UpdateItem",
          "dynamodb:DeleteItem",
          "dynamodb:ConditionCheckItem",
          "dynamodb:Query",
        ],
        [requestsTable.tableArn, requestsIndexes],
      ),
      allow(["s3:DeleteObject", "s3:AbortMultipartUpload"], [reportObjects, stagedObjects]),
      allow(["s3:ListBucket", "s3:ListBucketMultipartUploads"], [reportsBucket.bucketArn]),
      // An erasure's verification is asked of the report function (its access-requests queue).
      allow(["sqs:SendMessage"], [
        outboundQueue.queueArn,
        scheduleRequestsQueue.queueArn,
        dlq.queueArn,
        accessRequestsQueue.queueArn,
      ]),
    ];
    const erasureEnvironment = (dlq: sqs.Queue) => ({
      REQUESTS_TABLE: requestsTable.tableName,
      HOPS_TABLE: hopsTable.tableName,
      ...queueUrls,
      SUBJECT_HASH_KEY_PARAMETER: secret("subject-hash-key"),
      OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
      CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
      SCHEDULE_REQUESTS_QUEUE_URL: scheduleRequestsQueue.queueUrl,
      COMMANDS_EXCHANGE: ns("commands"),
      ERASURE_GRACE_SECONDS: erasureGraceSeconds.valueAsString,
      DEAD_LETTER_QUEUE_URL: dlq.queueUrl,
      // The service's own copies (the subject's access reports) are erased too.
      REPORTS_BUCKET: reportsBucket.bucketName,
      // Commands (and re-sends) to vendors that take batches wait there.
      VENDOR_ERASURES_QUEUE_URL: vendorErasuresQueue.queueUrl,
    });
    const erasure = fns.add("ErasureFunction", {
      binary: "erasure",
      description: "Erasure fan-out - one obligation per service, an erase command to each.",
      timeout: 60,
      environment: {
        ...erasureEnvironment(erasureRequestsDlq),
        ERASURE_LEASE_SECONDS: "120",
        VENDOR_ERASURES_DEAD_LETTER_QUEUE_URL: vendorErasuresDlq.queueUrl,
      },
      statements: [
        ...erasureStatements(erasureRequestsDlq),
        allow(["sqs:SendMessage"], [vendorErasuresQueue.queueArn, vendorErasuresDlq.queueArn]),
      ],
      queues: [
        { id: "ErasureRequests", queue: erasureRequestsQueue, batchSize: 5 },
        // Gathered, then one call per vendor.
        { id: "VendorErasures", queue: vendorErasuresQueue, batchSize: 100, batchingWindowSeconds: 5 },
      ],
    });
    const confirm = fns.add("ConfirmFunction", {
      binary: "confirm",
      description:
        "Confirmation tracking - records confirmations, re-sends to silent services, completes erasures.",
      timeout: 60,
      environment: erasureEnvironment(confirmationsDlq),
      statements: [...erasureStatements(confirmationsDlq), allow(["sqs:SendMessage"], [vendorErasuresQueue.queueArn])],
      queues: [{ id: "Confirmations", queue: confirmationsQueue, batchSize: 10 }],
    });

    const sweep = fns.add("SweepFunction", {
      binary: "sweep",
      description: "Re-sends lost work messages; deletes reports past their retention.",
      timeout: 60,
      environment: {
        REQUESTS_TABLE: requestsTable.tableName,
        HOPS_TABLE: hopsTable.tableName,
        ...queueUrls,
        SUBJECT_HASH_KEY_PARAMETER: secret("subject-hash-key"),
        OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
        SWEEP_STALE_AFTER_SECONDS: sweepStaleAfterSeconds.valueAsString,
        DEADLINE_WARNING_DAYS: deadlineWarningDays.valueAsString,
        ERASURE_GRACE_SECONDS: erasureGraceSeconds.valueAsString,
        REPORTS_BUCKET: reportsBucket.bucketName,
        REQUEST_RETENTION_DAYS: requestRetentionDays.valueAsString,
      },
      statements: [
        // The hops, read by window to compare them.
        allow(["dynamodb:Query"], [hopsTable.tableArn]),
        secretsStatement,
        allow(["s3:DeleteObject", "s3:AbortMultipartUpload"], [reportObjects, stagedObjects]),
        allow(["s3:ListBucket", "s3:ListBucketMultipartUploads"], [reportsBucket.bucketArn]),
        allow(
          ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
          [requestsTable.tableArn, requestsIndexes],
        ),
        allow(["sqs:SendMessage"], [accessRequestsQueue.queueArn, erasureRequestsQueue.queueArn, outboundQueue.queueArn]),
      ],
      schedules: [
        { id: "EveryMinute", name: "sweep", expression: "rate(1 minute)", deadLetters: sweepScheduleDlq },
        // Counts in sync, stuck requests re-driven, deadlines at risk (metrics + alarms).
        { id: "Reconcile", name: "reconcile", expression: "rate(15 minutes)", input: '{"task": "reconcile"}', deadLetters: sweepScheduleDlq },
      ],
    });

    const dispatch = fns.add("DispatchFunction", {
      binary: "dispatch",
      description: "Delayed dispatch - delivers a message at time T, once.",
      // A fixed name: the scheduler's wake-ups target it, and the function must know its ARN.
      functionName: dispatchFunctionName,
      timeout: 300,
      environment: {
        DELAYED_MESSAGES_TABLE: delayedMessagesTable.tableName,
        OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
        SCHEDULE_GROUP: dispatchScheduleGroup.ref,
        DISPATCH_TARGET_ARN: dispatchFunctionArn,
        SCHEDULER_ROLE_ARN: dispatchSchedulerRole.roleArn,
        SCHEDULER_DLQ_ARN: dispatchDlq.queueArn,
        SCHEDULE_REQUESTS_QUEUE_URL: scheduleRequestsQueue.queueUrl,
        DEAD_LETTER_QUEUE_URL: scheduleRequestsDlq.queueUrl,
        // The SQS queues the service's own schedules deliver to: the watchdog's checks, and
        // report collections handed on to a later invocation.
        CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
        ACCESS_REQUESTS_QUEUE_URL: accessRequestsQueue.queueUrl,
        RABBITMQ_NAMESPACE: rabbitMqNamespace.valueAsString,
        DELAYED_DISPATCH_CALLERS: delayedDispatchCallers.valueAsString,
      },
      statements: [
        allow(
          ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
          [delayedMessagesTable.tableArn, `${delayedMessagesTable.tableArn}/index/*`],
        ),
        allow(
          ["scheduler:CreateSchedule", "scheduler:UpdateSchedule", "scheduler:DeleteSchedule"],
          [`arn:${Aws.PARTITION}:scheduler:${Aws.REGION}:${Aws.ACCOUNT_ID}:schedule/${dispatchScheduleGroup.ref}/*`],
        ),
        allow(["iam:PassRole"], [dispatchSchedulerRole.roleArn]),
        // Destinations: RabbitMQ through the outbound queue, the watchdog's checks to the
        // confirmations queue, resumed collections to access-requests; its own dead letters.
        // No other queue.
        allow(
          ["sqs:SendMessage"],
          [outboundQueue.queueArn, confirmationsQueue.queueArn, accessRequestsQueue.queueArn, scheduleRequestsDlq.queueArn],
        ),
      ],
      queues: [{ id: "ScheduleRequests", queue: scheduleRequestsQueue, batchSize: 10 }],
      // The safety net: whatever is due is sent within a minute, even if a wake-up was lost.
      schedules: [{ id: "EveryMinute", name: "dispatch-due", expression: "rate(1 minute)", deadLetters: dispatchDlq }],
    });

    const bridgeOutbound = fns.add("BridgeOutboundFunction", {
      binary: "bridge",
      description: "Publishes the outbound queue to RabbitMQ exchanges, under publisher confirms.",
      timeout: 20,
      environment: {
        RABBITMQ_URL_PARAMETER: secret("rabbitmq-url"),
        EVENTS_EXCHANGE: ns("events"),
        RABBITMQ_NAMESPACE: rabbitMqNamespace.valueAsString,
        DELAYED_DISPATCH_CALLERS: delayedDispatchCallers.valueAsString,
        OUTBOUND_QUEUE_URL: outboundQueue.queueUrl,
        DEAD_LETTER_QUEUE_URL: outboundDlq.queueUrl,
        HOPS_TABLE: hopsTable.tableName,
        CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
      },
      statements: [
        hopsStatement,
        secretsStatement,
        // Dead letters, receipts, and a waiting message put back on its own queue.
        allow(["sqs:SendMessage"], [outboundDlq.queueArn, confirmationsQueue.queueArn, outboundQueue.queueArn]),
      ],
      queues: [{ id: "Outbound", queue: outboundQueue, batchSize: 10 }],
    });

    // Inbound on Amazon MQ: confirmations and schedule requests from the broker into SQS.
    const broker = rabbitMqBrokerArn.valueAsString;
    const brokerSecret = rabbitMqCredentialsSecretArn.valueAsString;
    const bridgeInbound = fns.add("BridgeInboundFunction", {
      binary: "bridge",
      description:
        "Forwards RabbitMQ confirmations and schedule requests to SQS; dead-letters malformed ones on the broker.",
      timeout: 30,
      condition: hasAmazonMqBroker,
      environment: {
        RABBITMQ_URL_PARAMETER: secret("rabbitmq-url"),
        RABBITMQ_NAMESPACE: rabbitMqNamespace.valueAsString,
        CONFIRMATIONS_QUEUE_URL: confirmationsQueue.queueUrl,
        SCHEDULE_REQUESTS_QUEUE_URL: scheduleRequestsQueue.queueUrl,
        ACCESS_REQUESTS_QUEUE_URL: accessRequestsQueue.queueUrl,
        SUBMISSIONS_QUEUE_URL: submissionsQueue.queueUrl,
      },
      statements: [
        secretsStatement,
        allow(
          ["sqs:SendMessage"],
          [confirmationsQueue.queueArn, scheduleRequestsQueue.queueArn, accessRequestsQueue.queueArn, submissionsQueue.queueArn],
        ),
        allow(["mq:DescribeBroker"], [broker]),
        allow(["secretsmanager:GetSecretValue"], [brokerSecret]),
        // Network interfaces in the broker's VPC: EC2 takes no resource names for these.
        allow(
          [
            "ec2:CreateNetworkInterface",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeVpcs",
            "ec2:DeleteNetworkInterface",
            "ec2:DescribeSubnets",
            "ec2:DescribeSecurityGroups",
          ],
          ["*"],
        ),
      ],
      brokerQueues: [
        { id: "Confirmations", broker, secret: brokerSecret, queue: ns("bridge.confirmations") },
        { id: "ScheduleRequests", broker, secret: brokerSecret, queue: ns("bridge.schedule") },
        { id: "Submissions", broker, secret: brokerSecret, queue: ns("bridge.requests") },
      ],
    });

    // ------------------------------------------------------------ user API
    const httpApi = new apigw.HttpApi(this, "HttpApi", { createDefaultStage: false });
    logicalId(httpApi, "HttpApi");
    // The whole API's ceiling, and a tighter one where a request starts work.
    const stage = new apigw.HttpStage(this, "HttpApiApiGatewayDefaultStage", {
      httpApi,
      autoDeploy: true,
      throttle: { burstLimit: 200, rateLimit: 100 },
    });
    logicalId(stage, "HttpApiApiGatewayDefaultStage");
    (stage.node.defaultChild as apigw.CfnStage).routeSettings = {
      "POST /v1/requests": { ThrottlingBurstLimit: 50, ThrottlingRateLimit: 20 },
    };
    const userJwt = new HttpJwtAuthorizer("UserJwt", jwtIssuer.valueAsString, {
      authorizerName: "UserJwt",
      jwtAudience: [jwtAudience.valueAsString],
      identitySource: ["$request.header.Authorization"],
    });
    const noAuth = new apigw.HttpNoneAuthorizer();
    const route = (
      fn: lambda.Function,
      method: apigw.HttpMethod,
      routePath: string,
      authorizer: apigw.IHttpRouteAuthorizer,
      authorizationScopes?: string[],
    ) => {
      const integration = new HttpLambdaIntegration(`${fn.node.id}${method}${routePath}`, fn, {
        payloadFormatVersion: apigw.PayloadFormatVersion.VERSION_2_0,
      });
      httpApi.addRoutes({ path: routePath, methods: [method], integration, authorizer, authorizationScopes });
    };
    route(intake, apigw.HttpMethod.POST, "/v1/requests", userJwt);
    route(intake, apigw.HttpMethod.GET, "/v1/requests", userJwt);
    route(intake, apigw.HttpMethod.GET, "/v1/requests/{id}", userJwt);
    route(intake, apigw.HttpMethod.DELETE, "/v1/requests/{id}", userJwt);
    route(intake, apigw.HttpMethod.GET, "/v1/requests/{id}/report", userJwt);
    route(intake, apigw.HttpMethod.GET, "/v1/requests/{id}/certificate", userJwt);
    // The key certificates are checked with: public, as a certificate is shown to others.
    route(intake, apigw.HttpMethod.GET, "/v1/certificate-keys", noAuth);
    // The operators' page: its shell is public and carries no data; the numbers need a token
    // with the operator scope.
    route(opsPage, apigw.HttpMethod.GET, "/ops", noAuth);
    route(opsPage, apigw.HttpMethod.GET, "/ops/shell.js", noAuth);
    route(opsPage, apigw.HttpMethod.GET, "/ops/page", userJwt, ["dsr/operate"]);
    route(opsPage, apigw.HttpMethod.GET, "/ops/summary", userJwt, ["dsr/operate"]);
    route(opsPage, apigw.HttpMethod.POST, "/ops/actions", userJwt, ["dsr/operate"]);

    // ------------------------------------------------------------ alarms and dashboard
    const alarmActions = Token.asList(
      Fn.conditionIf(hasAlarmTopic.logicalId, [alarmTopicArn.valueAsString], Aws.NO_VALUE),
    );
    const alarm = (
      id: string,
      props: {
        description: string;
        namespace: string;
        metricName: string;
        dimensions: Record<string, string>;
        statistic: string;
        period: number;
        evaluationPeriods: number;
        threshold: number;
        comparison: cloudwatch.ComparisonOperator;
        missing?: cloudwatch.TreatMissingData;
        condition?: CfnCondition;
      },
    ) => {
      const cfn = new cloudwatch.CfnAlarm(this, id, {
        alarmDescription: props.description,
        namespace: props.namespace,
        metricName: props.metricName,
        dimensions: Object.entries(props.dimensions).map(([name, value]) => ({ name, value })),
        statistic: props.statistic,
        period: props.period,
        evaluationPeriods: props.evaluationPeriods,
        threshold: props.threshold,
        comparisonOperator: props.comparison,
        treatMissingData: props.missing ?? cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmActions,
      });
      cfn.cfnOptions.condition = props.condition;
    };
    const deadLetterQueues_: [string, sqs.Queue][] = [
      ["AccessRequestsDeadLetterQueue", accessRequestsDlq],
      ["ErasureRequestsDeadLetterQueue", erasureRequestsDlq],
      ["VendorErasuresDeadLetterQueue", vendorErasuresDlq],
      ["OutboundDeadLetterQueue", outboundDlq],
      ["ScheduleRequestsDeadLetterQueue", scheduleRequestsDlq],
      ["ConfirmationsDeadLetterQueue", confirmationsDlq],
      ["SubmissionsDeadLetterQueue", submissionsDlq],
      ["DispatchDeadLetterQueue", dispatchDlq],
      ["SweepScheduleDeadLetterQueue", sweepScheduleDlq],
    ];
    for (const [name, queue] of deadLetterQueues_) {
      alarm(`${name}NotEmptyAlarm`, {
        description: `A message is in ${name}; the README's "Operating it" says what to do.`,
        namespace: "AWS/SQS",
        metricName: "ApproximateNumberOfMessagesVisible",
        dimensions: { QueueName: queue.queueName },
        statistic: "Maximum",
        period: 300,
        evaluationPeriods: 1,
        threshold: 0,
        comparison: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      });
    }
    const ours = (
      id: string,
      description: string,
      metricName: string,
      fn: string,
      statistic: string,
      period: number,
      more: Partial<{ evaluationPeriods: number; threshold: number; comparison: cloudwatch.ComparisonOperator; missing: cloudwatch.TreatMissingData }> = {},
    ) =>
      alarm(id, {
        description,
        namespace: metricsNamespace,
        metricName,
        dimensions: { Function: fn },
        statistic,
        period,
        evaluationPeriods: more.evaluationPeriods ?? 1,
        threshold: more.threshold ?? 0,
        comparison: more.comparison ?? cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        missing: more.missing,
      });
    ours(
      "FailedRequestsAlarm",
      "A request failed after its last attempt (see the report function's log, report_failed=1).",
      "RequestsFailed",
      "report",
      "Sum",
      900,
    );
    ours("DeadlineAtRiskAlarm", "An open request is within DeadlineWarningDays of its legal deadline.", "DeadlineAtRisk", "sweep", "Maximum", 900);
    ours("DeadlineMissedAlarm", "An open request is past its legal deadline.", "DeadlineMissed", "sweep", "Maximum", 900);
    ours(
      "CountsOutOfSyncAlarm",
      "A request is missing a hop it should have taken by now - a message was lost between two functions " +
        "(log alert=hop_mismatch names the hop and the requests; dsr-ops sync) - or the reconciliation stopped running.",
      "CountsInSync",
      "sweep",
      "Minimum",
      900,
      {
        threshold: 1,
        comparison: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        missing: cloudwatch.TreatMissingData.BREACHING,
      },
    );
    ours("ErasureEscalatedAlarm", "A service did not confirm an erasure after every re-send.", "Escalations", "confirm", "Sum", 900);
    // A service said it erased, and a verification read its data again: its command was sent
    // again, but a service that says so without doing it is worth a look.
    ours(
      "ErasureDataFoundAfterAnswerAlarm",
      "A verification found a subject's data at a service that had confirmed the erasure.",
      "DataFoundAfterAnswer",
      "confirm",
      "Sum",
      900,
    );
    // The outbound queue's age cannot tell: a message waiting for the broker is put back as a
    // fresh one every few minutes. The bridge counts what it could not publish instead.
    ours(
      "BridgeOutboundStalledAlarm",
      "The RabbitMQ bridge cannot reach the broker for 10 minutes; outbound messages wait (nothing is lost).",
      "BridgeBrokerUnavailable",
      "bridge",
      "Sum",
      300,
      { evaluationPeriods: 2 },
    );
    ours(
      "BridgeUnroutableAlarm",
      "The broker returned outbound messages as unroutable (a holder's queue is not bound, or nobody listens to an event); " +
        "they are retried, and dead-lettered after 24 hours.",
      "BridgeUnroutable",
      "bridge",
      "Sum",
      300,
    );
    alarm("BridgeInboundStalledAlarm", {
      description: "Confirmations wait on RabbitMQ - the inbound bridge is not consuming.",
      namespace: "AWS/AmazonMQ",
      metricName: "MessageCount",
      dimensions: {
        Broker: Fn.select(6, Fn.split(":", broker)),
        VirtualHost: "/",
        Queue: ns("bridge.confirmations"),
      },
      statistic: "Minimum",
      period: 300,
      evaluationPeriods: 3,
      threshold: 0,
      comparison: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      condition: hasAmazonMqBroker,
    });

    // The dashboard is the same document as template.yaml's (infra/cdk/dashboard.json, kept
    // equal to it by the drift test): ${Ns} is the metrics namespace, ${AWS::Region} the region.
    const dashboard = fs.readFileSync(path.join(__dirname, "..", "..", "dashboard.json"), "utf8");
    new cloudwatch.CfnDashboard(this, "OperationsDashboard", {
      dashboardName: `${Aws.STACK_NAME}-gdpr-requests`,
      dashboardBody: Fn.sub(dashboard, { Ns: metricsNamespace }),
    });

    // ------------------------------------------------------------ logs
    // Each function's log group, made here so that it has a retention.
    for (const [id, fn, condition] of [
      ["OpsPageLogGroup", opsPage],
      ["IntakeLogGroup", intake],
      ["ReportLogGroup", report],
      ["ErasureLogGroup", erasure],
      ["ConfirmLogGroup", confirm],
      ["SubmissionsLogGroup", submissions],
      ["SweepLogGroup", sweep],
      ["DispatchLogGroup", dispatch],
      ["BridgeOutboundLogGroup", bridgeOutbound],
      ["BridgeInboundLogGroup", bridgeInbound, hasAmazonMqBroker],
    ] as [string, lambda.Function, CfnCondition?][]) {
      const group = new logs.CfnLogGroup(this, id, {
        logGroupName: `/aws/lambda/${fn.functionName}`,
        retentionInDays: logRetentionDays.valueAsNumber,
      });
      group.cfnOptions.condition = condition;
    }

    // ------------------------------------------------------------ outputs
    const apiUrl = `https://${httpApi.apiId}.execute-api.${Aws.REGION}.${Aws.URL_SUFFIX}`;
    new CfnOutput(this, "ApiUrl", { description: "Base URL of the user API.", value: apiUrl });
    new CfnOutput(this, "OpsPageUrl", {
      description: "The operations page (a token with the dsr/operate scope opens it).",
      value: `${apiUrl}/ops`,
    });
    const outputs: [string, string][] = [
      ["RequestsTableName", requestsTable.tableName],
      ["ReportsBucketName", reportsBucket.bucketName],
      ["AccessRequestsQueueUrl", accessRequestsQueue.queueUrl],
      ["ErasureRequestsQueueUrl", erasureRequestsQueue.queueUrl],
      ["SubmissionsQueueUrl", submissionsQueue.queueUrl],
      ["SubmissionsDeadLetterQueueUrl", submissionsDlq.queueUrl],
      ["AccessRequestsDeadLetterQueueUrl", accessRequestsDlq.queueUrl],
      ["ErasureRequestsDeadLetterQueueUrl", erasureRequestsDlq.queueUrl],
      ["VendorErasuresQueueUrl", vendorErasuresQueue.queueUrl],
      ["VendorErasuresDeadLetterQueueUrl", vendorErasuresDlq.queueUrl],
      ["OutboundQueueUrl", outboundQueue.queueUrl],
      ["ConfirmationsQueueUrl", confirmationsQueue.queueUrl],
      ["ScheduleRequestsQueueUrl", scheduleRequestsQueue.queueUrl],
      ["DelayedMessagesTableName", delayedMessagesTable.tableName],
    ];
    for (const [name, value] of outputs) {
      new CfnOutput(this, name, { value });
    }
    // What `dsr-ops --stack <name>` reads, with the outputs above.
    new CfnOutput(this, "HopsTableName", { value: hopsTable.tableName });
    new CfnOutput(this, "SubjectHashKeyParameter", {
      description: "The Parameter Store name of the subject hash key (the value stays there).",
      value: secret("subject-hash-key"),
    });
  }
}

interface FunctionSpec {
  binary: string;
  description: string;
  environment: Record<string, string>;
  statements: iam.PolicyStatement[];
  timeout?: number;
  memorySize?: number;
  ephemeralStorageMiB?: number;
  functionName?: string;
  condition?: CfnCondition;
  queues?: { id: string; queue: sqs.Queue; batchSize: number; batchingWindowSeconds?: number }[];
  brokerQueues?: { id: string; broker: string; secret: string; queue: string }[];
  /** Named after the stack: schedule names are per account and region. */
  schedules?: { id: string; name: string; expression: string; input?: string; deadLetters: sqs.Queue }[];
}

/** The functions, as template.yaml's `Globals` and SAM's expansion of each function make them. */
class Functions {
  constructor(
    private readonly stack: Stack,
    private readonly artifacts: string,
    private readonly metricsNamespace: string,
  ) {}

  add(id: string, spec: FunctionSpec): lambda.Function {
    const stack = this.stack;
    const managed = ["service-role/AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess"];
    if (spec.queues?.length) {
      managed.push("service-role/AWSLambdaSQSQueueExecutionRole");
    }
    const role = new iam.Role(stack, `${id}Role`, {
      assumedBy: new iam.ServicePrincipal("lambda.amazonaws.com"),
      managedPolicies: managed.map((name) => iam.ManagedPolicy.fromAwsManagedPolicyName(name)),
      inlinePolicies: { [`${id}RolePolicy0`]: new iam.PolicyDocument({ statements: spec.statements }) },
    });
    logicalId(role, `${id}Role`);
    const fn = new lambda.Function(stack, id, {
      description: spec.description,
      functionName: spec.functionName,
      // The same artifact `sam build` makes: `make package` leaves <binary>/bootstrap.
      code: lambda.Code.fromAsset(path.join(this.artifacts, spec.binary)),
      handler: "bootstrap",
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.ARM_64,
      memorySize: spec.memorySize ?? 128,
      timeout: Duration.seconds(spec.timeout ?? 10),
      ephemeralStorageSize: spec.ephemeralStorageMiB ? Size.mebibytes(spec.ephemeralStorageMiB) : undefined,
      loggingFormat: lambda.LoggingFormat.JSON,
      role,
      environment: { RUST_LOG: "info", METRICS_NAMESPACE: this.metricsNamespace, ...spec.environment },
    });
    const cfn = fn.node.defaultChild as lambda.CfnFunction;
    cfn.overrideLogicalId(id);
    // Traced as SAM traces (its managed X-Ray policy on the role above), not with a second
    // policy of CDK's own.
    cfn.tracingConfig = { mode: "Active" };
    cfn.addMetadata("BuildMethod", "rust-cargolambda");
    cfn.addMetadata("BuildProperties", { Binary: spec.binary });
    for (const resource of [cfn, role.node.defaultChild as CfnResource]) {
      resource.cfnOptions.condition = spec.condition;
    }
    for (const q of spec.queues ?? []) {
      const mapping = new lambda.CfnEventSourceMapping(stack, `${id}${q.id}`, {
        functionName: fn.functionName,
        eventSourceArn: q.queue.queueArn,
        batchSize: q.batchSize,
        maximumBatchingWindowInSeconds: q.batchingWindowSeconds,
        functionResponseTypes: ["ReportBatchItemFailures"],
      });
      mapping.cfnOptions.condition = spec.condition;
    }
    for (const b of spec.brokerQueues ?? []) {
      const mapping = new lambda.CfnEventSourceMapping(stack, `${id}${b.id}`, {
        functionName: fn.functionName,
        eventSourceArn: b.broker,
        queues: [b.queue],
        sourceAccessConfigurations: [{ type: "BASIC_AUTH", uri: b.secret }],
        batchSize: 10,
      });
      mapping.cfnOptions.condition = spec.condition;
    }
    for (const s of spec.schedules ?? []) {
      const scheduleRole = new iam.Role(stack, `${id}${s.id}Role`, {
        assumedBy: new iam.ServicePrincipal("scheduler.amazonaws.com"),
        inlinePolicies: {
          [`${id}${s.id}LambdaPolicy`]: new iam.PolicyDocument({
            statements: [new iam.PolicyStatement({ actions: ["lambda:InvokeFunction"], resources: [fn.functionArn] })],
          }),
          [`${id}${s.id}SQSPolicy`]: new iam.PolicyDocument({
            statements: [new iam.PolicyStatement({ actions: ["sqs:SendMessage"], resources: [s.deadLetters.queueArn] })],
          }),
        },
      });
      logicalId(scheduleRole, `${id}${s.id}Role`);
      new scheduler.CfnSchedule(stack, `${id}${s.id}`, {
        name: `${Aws.STACK_NAME}-${s.name}`,
        scheduleExpression: s.expression,
        flexibleTimeWindow: { mode: "OFF" },
        target: {
          arn: fn.functionArn,
          roleArn: scheduleRole.roleArn,
          input: s.input,
          deadLetterConfig: { arn: s.deadLetters.queueArn },
          retryPolicy: { maximumRetryAttempts: 2 },
        },
      });
    }
    return fn;
  }
}
