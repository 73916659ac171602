"""Pulling one task's input from the site's SuperNode (the runtime's I/O with Flower internals).

The SuperNode hands out a task as soon as a message's header arrives and fetches its arrays from
the coordinator afterwards. Flower's `pull_task_input` (flwr.supernode.runtime.run_clientapp,
flwr==1.42.0) retries an object that is not there yet after 1 s, then 2, 4, ... (its
PULL_INITIAL_BACKOFF), so the site sat idle for whole seconds after the arrays had arrived.
This is the same protocol with a 20 ms first retry and a 0.5 s cap; replies are pushed
with Flower's own `push_message`. Internals of the pinned flwr: tests/test_site_runtime.py runs
them on a real SuperNode."""

from __future__ import annotations

from flwr.app import Message

FIRST_RETRY_S = 0.02
MAX_RETRY_S = 0.5


def pull_task_input(client) -> tuple:
    """(message, context, run, fab) of the task `client`'s token names."""
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
        PullAppMessagesRequest,
        PullTaskInputRequest,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, initial_backoff=FIRST_RETRY_S, backoff_cap=MAX_RETRY_S)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's own pull does
    return message, context, run, fab
