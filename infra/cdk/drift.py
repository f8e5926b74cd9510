#!/usr/bin/env python3
"""Drift between the SAM template and the CDK app: the same resources, or a list of differences.

    drift.py template.yaml cdk.out/GdprDsr.template.json

template.yaml is expanded by the SAM transform itself (aws-sam-translator, offline, as
`sam deploy` has CloudFormation do it), then both templates are reduced to what a deployment
makes: every resource under its logical id, its properties with the intrinsic functions written
out one way (`!Sub "${A}/x"` and `Fn::Join ["", [Ref A, "/x"]]` are the same string), policies
as sets of (effect, action, resource) grants, the HTTP API as its routes and authorizers.
What only one tool adds on its own and that changes nothing deployed is left out: CDK's
metadata and bootstrap-version check, SAM's tags, the functions' code location (both deploy the
same `bootstrap`: the binary each function is built from is compared), and the invoke
permissions each tool derives from the routes.
Exit status 0: no drift; 1: drift, printed one difference per line.
"""

import json
import os
import re
import sys

NO_VALUE = object()


def render(value):
    """A template value with its intrinsic functions written out as one canonical form."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return NO_VALUE if arg == "AWS::NoValue" else "${%s}" % arg
            if key == "Fn::GetAtt":
                return "${%s}" % (".".join(arg) if isinstance(arg, list) else arg)
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    text, variables = arg
                    for name, var in variables.items():
                        text = text.replace("${%s}" % name, render(var))
                    return text
                return arg
            if key == "Fn::Join":
                separator, parts = arg
                rendered = [render(p) for p in parts]
                if all(isinstance(p, str) for p in rendered):
                    return separator.join(rendered)
                return {"Join": [separator, rendered]}
            if key in ("Fn::If", "Fn::Select", "Fn::Split", "Fn::Equals", "Fn::Not",
                       "Fn::And", "Fn::Or", "Condition"):
                return {key.removeprefix("Fn::"): render(arg)}
        out = {}
        for k, v in value.items():
            r = render(v)
            if r is not NO_VALUE:
                out[k] = r
        return out
    if isinstance(value, list):
        return [r for r in (render(v) for v in value) if r is not NO_VALUE]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        # SAM writes the partition of the region it expands for; CDK leaves it to the deploy.
        return re.sub(r"\barn:aws:", "arn:${AWS::Partition}:", value)
    return value


def as_list(value):
    return value if isinstance(value, list) else [value]


def grants(document):
    """A policy document as a sorted set of single (effect, action, resource, ...) grants."""
    out = set()
    for st in as_list(render(document).get("Statement", [])):
        principal = st.get("Principal", "")
        principals = (
            [f"{kind}:{p}" for kind, ps in principal.items() for p in as_list(ps)]
            if isinstance(principal, dict) else [json.dumps(principal)]
        )
        for action in as_list(st.get("Action", [])):
            for resource in as_list(st.get("Resource", "")):
                for who in principals:
                    out.add(" ".join([
                        st.get("Effect", ""), action, json.dumps(resource, sort_keys=True), who,
                        json.dumps(st.get("Condition", ""), sort_keys=True),
                    ]))
    return sorted(out)


def documents(value):
    """Every policy document inside a resource's properties, as grants."""
    if isinstance(value, dict):
        return {
            k: grants(v) if k.endswith("PolicyDocument") else documents(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [documents(v) for v in value]
    return value


def http_api(resources, api_id):
    """The API's routes (method and path → function, authorizer, scopes) and authorizers."""
    api = resources[api_id]["Properties"]
    routes, authorizers = {}, {}
    function_of = re.compile(r"\$\{(\w+)\.Arn\}")
    if "Body" in api:  # SAM: an OpenAPI body
        body = render(api["Body"])
        for path, methods in body.get("paths", {}).items():
            for method, op in methods.items():
                integration = op["x-amazon-apigateway-integration"]
                (authorizer, scopes), = op.get("security", [{"NONE": []}])[0].items()
                routes[f"{method.upper()} {path}"] = {
                    "Function": function_of.search(integration["uri"]).group(1),
                    "PayloadFormatVersion": integration.get("payloadFormatVersion"),
                    "Authorizer": authorizer,
                    "Scopes": sorted(scopes),
                }
        for name, scheme in body.get("components", {}).get("securitySchemes", {}).items():
            a = scheme["x-amazon-apigateway-authorizer"]
            authorizers[name] = {
                "Type": a["type"].upper(),
                "Issuer": a["jwtConfiguration"]["issuer"],
                "Audience": as_list(a["jwtConfiguration"]["audience"]),
                "IdentitySource": as_list(a["identitySource"]),
            }
    else:  # CDK: Route, Integration and Authorizer resources
        of_api = {
            k: r for k, r in resources.items()
            if r.get("Properties", {}).get("ApiId") == {"Ref": api_id}
        }
        names = {}
        for k, r in of_api.items():
            if r["Type"] == "AWS::ApiGatewayV2::Authorizer":
                p = render(r["Properties"])
                names[k] = p["Name"]
                authorizers[p["Name"]] = {
                    "Type": p["AuthorizerType"],
                    "Issuer": p["JwtConfiguration"]["Issuer"],
                    "Audience": p["JwtConfiguration"]["Audience"],
                    "IdentitySource": p["IdentitySource"],
                }
        for k, r in of_api.items():
            if r["Type"] != "AWS::ApiGatewayV2::Route":
                continue
            p = r["Properties"]
            target = render(p["Target"]).removeprefix("integrations/${").removesuffix("}")
            integration = render(resources[target]["Properties"])
            authorizer = p.get("AuthorizerId", {}).get("Ref")
            routes[p["RouteKey"]] = {
                "Function": function_of.search(integration["IntegrationUri"]).group(1),
                "PayloadFormatVersion": integration.get("PayloadFormatVersion"),
                "Authorizer": names[authorizer] if authorizer else p.get("AuthorizationType", "NONE"),
                "Scopes": sorted(p.get("AuthorizationScopes", [])),
            }
    return {"Routes": routes, "Authorizers": authorizers}


# Resources each tool makes on its own, derived from what is compared.
DERIVED = {
    "AWS::CDK::Metadata",
    "AWS::Lambda::Permission",
    "AWS::ApiGatewayV2::Route",
    "AWS::ApiGatewayV2::Integration",
    "AWS::ApiGatewayV2::Authorizer",
}


def model(template):
    resources = template["Resources"]
    out = {
        "Parameters": {
            name: render({k: v for k, v in p.items() if k != "Description"})
            for name, p in template.get("Parameters", {}).items()
            if name != "BootstrapVersion"
        },
        "Conditions": render(template.get("Conditions", {})),
        "Outputs": {
            name: render({k: o[k] for k in ("Value", "Description") if k in o})
            for name, o in template.get("Outputs", {}).items()
        },
        "Resources": {},
    }
    # Policies CDK writes as resources of their own belong to the roles they are attached to.
    attached = {}
    for r in resources.values():
        if r["Type"] == "AWS::IAM::Policy":
            for role in r["Properties"].get("Roles", []):
                attached.setdefault(role["Ref"], []).append(r["Properties"]["PolicyDocument"])
    for rid, r in resources.items():
        kind = r["Type"]
        if kind in DERIVED or kind == "AWS::IAM::Policy":
            continue
        props = dict(r.get("Properties", {}))
        props.pop("Tags", None)
        entry = {
            "Type": kind,
            "Condition": r.get("Condition"),
            "DeletionPolicy": r.get("DeletionPolicy", "Delete"),
            "UpdateReplacePolicy": r.get("UpdateReplacePolicy", "Delete"),
        }
        if kind == "AWS::Lambda::Function":
            props.pop("Code")
            entry["Binary"] = r.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        elif kind == "AWS::IAM::Role":
            documents_ = [p["PolicyDocument"] for p in props.pop("Policies", [])]
            documents_ += attached.get(rid, [])
            entry["Grants"] = sorted({g for d in documents_ for g in grants(d)})
            props["ManagedPolicyArns"] = sorted(render(props.get("ManagedPolicyArns", [])))
        elif kind == "AWS::DynamoDB::Table":
            props["AttributeDefinitions"] = sorted(
                props.get("AttributeDefinitions", []), key=lambda a: a["AttributeName"]
            )
        elif kind == "AWS::CloudWatch::Dashboard":
            props["DashboardBody"] = json.loads(render(props["DashboardBody"]))
        elif kind == "AWS::ApiGatewayV2::Api":
            entry.update(http_api(resources, rid))
            props = {k: v for k, v in props.items() if k not in ("Body", "Name", "ProtocolType")}
        entry["Properties"] = documents(render(props))
        out["Resources"][rid] = entry
    return out


def differences(sam, cdk, path=""):
    if isinstance(sam, dict) and isinstance(cdk, dict):
        for key in sorted(set(sam) | set(cdk)):
            where = f"{path}.{key}" if path else key
            if key not in cdk:
                yield f"{where}: only in template.yaml: {json.dumps(sam[key], sort_keys=True)}"
            elif key not in sam:
                yield f"{where}: only in the CDK app: {json.dumps(cdk[key], sort_keys=True)}"
            else:
                yield from differences(sam[key], cdk[key], where)
    elif path.endswith("Grants") and sam != cdk:
        for grant in sorted(set(sam) - set(cdk)):
            yield f"{path}: only in template.yaml: {grant}"
        for grant in sorted(set(cdk) - set(sam)):
            yield f"{path}: only in the CDK app: {grant}"
    elif sam != cdk:
        yield (f"{path}: template.yaml {json.dumps(sam, sort_keys=True)} "
               f"!= CDK {json.dumps(cdk, sort_keys=True)}")


def sam_expanded(path):
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    with open(path) as f:
        template = yaml_parse(f.read())
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            # What `sam package` puts there once it uploaded the built function.
            binary = resource["Metadata"]["BuildProperties"]["Binary"]
            resource["Properties"]["CodeUri"] = f"s3://artifacts/{binary}.zip"

    class NoManagedPolicyLookups:
        def load(self):
            return {}

    parameters = {name: "x" for name, p in template["Parameters"].items() if "Default" not in p}
    return transform(template, parameters, NoManagedPolicyLookups())


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sam = model(sam_expanded(sys.argv[1]))
    with open(sys.argv[2]) as f:
        cdk = model(json.load(f))
    found = list(differences(sam, cdk))
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} difference(s) between template.yaml and the CDK app", file=sys.stderr)
        sys.exit(1)
    print(f"no drift: {len(sam['Resources'])} resources, {len(sam['Parameters'])} parameters, "
          f"{len(sam['Outputs'])} outputs the same")


if __name__ == "__main__":
    main()
