"""Minimal JSON schemas of the custom resources the chart and its examples render.

Why: the Kubernetes schemas in kubernetes-validate cover core kinds only, and the CRDs of the
Prometheus operator, KEDA and Strimzi cannot be downloaded here. These schemas hold the fields
the chart sets, with unknown fields rejected, so a typo in a template fails the test.
"""

from typing import Any

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
LABELS = {"type": "object", "additionalProperties": STRING}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": STRING,
        "namespace": STRING,
        "labels": LABELS,
        "annotations": LABELS,
    },
    "additionalProperties": False,
}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _closed(
        {
            "jobLabel": STRING,
            "selector": _closed({"matchLabels": LABELS}, ["matchLabels"]),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _closed({"port": STRING, "path": STRING, "interval": STRING}, ["port"]),
            },
        },
        ["selector", "endpoints"],
    ),
)

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _closed(
        {
            "groups": {
                "type": "array",
                "items": _closed(
                    {
                        "name": STRING,
                        "rules": {
                            "type": "array",
                            "items": _closed(
                                {
                                    "alert": STRING,
                                    "expr": STRING,
                                    "for": STRING,
                                    "labels": LABELS,
                                    "annotations": LABELS,
                                },
                                ["alert", "expr"],
                            ),
                        },
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
)

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _closed(
        {
            "scaleTargetRef": _closed({"name": STRING}, ["name"]),
            "minReplicaCount": INTEGER,
            "maxReplicaCount": INTEGER,
            "pollingInterval": INTEGER,
            "cooldownPeriod": INTEGER,
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "type": {"const": "kafka"},
                        "metadata": _closed(
                            {
                                "bootstrapServers": STRING,
                                "consumerGroup": STRING,
                                "topic": STRING,
                                "lagThreshold": STRING,
                                "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                "sasl": {"enum": ["plaintext", "scram_sha256", "scram_sha512"]},
                                "tls": {"const": "enable"},
                            },
                            ["bootstrapServers", "consumerGroup", "topic", "lagThreshold"],
                        ),
                        "authenticationRef": _closed({"name": STRING}, ["name"]),
                    },
                    ["type", "metadata"],
                ),
            },
        },
        ["scaleTargetRef", "triggers"],
    ),
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _closed(
        {
            "secretTargetRef": {
                "type": "array",
                "items": _closed(
                    {"parameter": STRING, "name": STRING, "key": STRING}, ["parameter", "name", "key"]
                ),
            },
            "env": {
                "type": "array",
                "items": _closed(
                    {"parameter": STRING, "name": STRING, "containerName": STRING}, ["parameter", "name"]
                ),
            },
        }
    ),
)

KAFKA_NODE_POOL = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaNodePool",
    _closed(
        {
            "replicas": INTEGER,
            "roles": {"type": "array", "items": {"enum": ["controller", "broker"]}},
            "storage": {"type": "object"},
            "resources": {"type": "object"},
        },
        ["replicas", "roles", "storage"],
    ),
)

KAFKA = _resource(
    "kafka.strimzi.io/v1beta2",
    "Kafka",
    _closed(
        {
            "kafka": _closed(
                {
                    "version": STRING,
                    "metadataVersion": STRING,
                    "listeners": {
                        "type": "array",
                        "items": _closed(
                            {
                                "name": STRING,
                                "port": INTEGER,
                                "type": {
                                    "enum": [
                                        "internal",
                                        "route",
                                        "loadbalancer",
                                        "nodeport",
                                        "ingress",
                                        "cluster-ip",
                                    ]
                                },
                                "tls": {"type": "boolean"},
                                "authentication": _closed(
                                    {"type": {"enum": ["tls", "scram-sha-512", "custom"]}}
                                ),
                            },
                            ["name", "port", "type", "tls"],
                        ),
                    },
                    "config": {"type": "object"},
                },
                ["listeners"],
            ),
            "entityOperator": _closed(
                {"topicOperator": {"type": "object"}, "userOperator": {"type": "object"}}
            ),
        },
        ["kafka"],
    ),
)

KAFKA_USER = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaUser",
    _closed({"authentication": _closed({"type": {"enum": ["tls", "scram-sha-512", "tls-external"]}})}),
)

KAFKA_TOPIC = _resource(
    "kafka.strimzi.io/v1beta2",
    "KafkaTopic",
    _closed(
        {"topicName": STRING, "partitions": INTEGER, "replicas": INTEGER, "config": {"type": "object"}},
        ["partitions", "replicas"],
    ),
)

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): KAFKA_NODE_POOL,
    ("kafka.strimzi.io/v1beta2", "Kafka"): KAFKA,
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): KAFKA_USER,
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): KAFKA_TOPIC,
}
