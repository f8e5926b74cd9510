#!/usr/bin/env node
// The CDK app: `npx cdk deploy` (after `make package`), or `npx cdk synth` to see the template.
//   -c artifacts=<dir>   where `make package` left the functions (<dir>/<binary>/bootstrap);
//                        default: $DSR_ARTIFACTS, else ../../target/lambda-arm64
//   -c stackName=<name>  the stack's name (default gdpr-dsr, as in samconfig.toml)
import * as path from "node:path";
import { App } from "aws-cdk-lib";
import { DsrStack } from "../lib/stack";

const app = new App();
const artifacts =
  (app.node.tryGetContext("artifacts") as string | undefined) ??
  process.env.DSR_ARTIFACTS ??
  path.join(__dirname, "..", "..", "..", "..", "target", "lambda-arm64");
const stackName = (app.node.tryGetContext("stackName") as string | undefined) ?? "gdpr-dsr";

new DsrStack(app, "GdprDsr", {
  stackName,
  artifacts: path.resolve(artifacts),
  description:
    "GDPR Data Subject Rights service: users ask for their data (Art. 15/20) or its erasure " +
    "(Art. 17); every request is tracked to completion within the one-month deadline.",
});
