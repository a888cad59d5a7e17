"""The live budget: read it, change ρ and the cost cap (bearer token; every change is audited)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Request

from gateway.api.deps import BudgetViewDep, require_admin
from gateway.schemas import BudgetUpdate

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
audit = logging.getLogger("routet2i.audit")


@router.get("/budget")
async def get_budget(budget: BudgetViewDep) -> dict:
    """ρ, α, the windowed cloud fraction and cost-cap use; the cost budget, λ and each arm's share and cost."""
    return budget.snapshot()


@router.put("/budget")
async def put_budget(body: BudgetUpdate, request: Request, budget: BudgetViewDep) -> dict:
    """Change ρ or the cost budget (mean cost per request), and/or the cost cap (0 removes it); effective on the
    next request. ρ and the two-arm cost budget persist in the state file; the N-arm cost budget lives in memory."""
    if body.rho is not None and body.cost_budget is not None:
        raise HTTPException(422, "send rho or cost_budget, not both (rho is the two-arm shorthand of a cost budget)")
    before = budget.snapshot()
    try:
        if body.cost_cap_per_minute is not None:
            budget.set_cost_cap(body.cost_cap_per_minute or None)
        if body.rho is not None:
            budget.set_rho(body.rho)
        if body.cost_budget is not None:
            budget.set_cost_budget(body.cost_budget)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    except OSError as exc:  # the state file cannot be written (the value is not changed)
        audit.error("admin budget change from %s failed: cannot write the state file (%s)",
                    request.client.host if request.client else "?", type(exc).__name__)  # fmt: skip
        raise HTTPException(503, f"cannot persist the budget: {type(exc).__name__}: {exc.strerror or exc}") from exc
    after = budget.snapshot()
    audit.warning(
        "admin budget change from %s: rho %s -> %s, cost_budget %s -> %s, cost_cap %s -> %s",
        request.client.host if request.client else "?", before["rho"], after["rho"], before["cost_budget"],
        after["cost_budget"], before["cost_cap"], after["cost_cap"],
    )  # fmt: skip
    return after
