"""English and French: the language a page is written in, its words and its numbers.

The language is the one the switch chose (a cookie), else the first of the browser's
Accept-Language that the console speaks, else English. The English text is the key;
FRENCH gives each its translation (tests/console check that every text of a template
has one). Codes that are identifiers (reason codes, rule names, record kinds) stay as
they are in both: they are what the journal, the dialplan and docs/rules.md say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jinja2
from aiohttp import web

__all__ = [
    "COOKIE",
    "FRENCH",
    "LANGUAGES",
    "language_of",
    "negotiate",
    "number",
    "percent",
    "translator",
]

LANGUAGES = ("en", "fr")
COOKIE = "dialguard_lang"


def negotiate(accept_language: str) -> str:
    """The first language of the header the console speaks (by q, then order)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LANGUAGES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else "en"


def language_of(request: web.Request) -> str:
    chosen = request.cookies.get(COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    return negotiate(request.headers.get("Accept-Language", ""))


def translator(lang: str) -> Callable[[str], str]:
    if lang == "fr":
        return lambda text: FRENCH.get(text, text)
    return lambda text: text


@jinja2.pass_context
def number(context: Any, value: int | float) -> str:
    """1,234 in English; 1 234 (a narrow no-break space) in French."""
    text = f"{value:,}"
    return text.replace(",", "\u202f") if context.get("lang") == "fr" else text


@jinja2.pass_context
def percent(context: Any, value: float) -> str:
    """69.4% in English; 69,4 % in French."""
    text = f"{value * 100:.1f}"
    return f"{text.replace('.', ',')}\u202f%" if context.get("lang") == "fr" else f"{text}%"


FRENCH: dict[str, str] = {
    # roles
    "viewer": "lecture",
    "compliance": "conformité",
    # navigation
    "Today": "Aujourd'hui",
    "Search": "Recherche",
    "Number history": "Historique d'un numéro",
    "Lists": "Listes",
    "Exports": "Exports",
    "Log out": "Se déconnecter",
    # login
    "Supervisor console": "Console de supervision",
    "User": "Utilisateur",
    "Password": "Mot de passe",
    "Log in": "Se connecter",
    "No user yet. On the console's machine:": "Aucun utilisateur. Sur la machine de la console :",
    "Wrong user name or password.": "Utilisateur ou mot de passe incorrect.",
    "Too many failed logins: try again in": "Trop d'échecs de connexion : réessayez dans",
    "minutes": "minutes",
    # today
    "Day": "Jour",
    "Show": "Afficher",
    "Decisions": "Décisions",
    "Allowed": "Autorisées",
    "Denied": "Refusées",
    "Deny rate": "Taux de refus",
    "Degraded": "Dégradées",
    "Pending changes": "Changements en attente",
    "Pending changes unknown": "Changements en attente inconnus",
    "Shadow denials (allowed)": "Refus en mode observation (autorisés)",
    "Outcomes recorded": "Issues d'appel enregistrées",
    "By reason": "Par motif",
    "By campaign": "Par campagne",
    "By hour": "Par heure",
    "Result": "Résultat",
    "Reason": "Motif",
    "Share": "Part",
    "No decision": "Aucune décision",
    "Campaign": "Campagne",
    "Hour": "Heure",
    "Nodes": "Nœuds",
    "Node": "Nœud",
    "Records": "Enregistrements",
    "Last record shipped": "Dernier enregistrement reçu",
    "Shipped at": "Reçu à",
    "Lag": "Retard",
    "Chain": "Chaîne",
    "intact at ingest": "intacte à la réception",
    "chain breaks": "ruptures de chaîne",
    "shipping stopped": "envoi arrêté",
    "No node has shipped yet": "Aucun nœud n'a encore envoyé son journal",
    "Lag: how long the last record shipped waited between its decision and the store.": (
        "Retard : le temps passé par le dernier enregistrement reçu entre sa décision et"
        " le stockage central."
    ),
    "Journalled but not yet taken by Redis: counted in decisions meanwhile, applied once"
    " Redis answers.": (
        "Inscrits au journal mais pas encore pris par Redis : pris en compte dans les"
        " décisions en attendant, appliqués dès que Redis répond."
    ),
    "Time": "Heure",
    "Kind": "Type",
    "Number": "Numéro",
    "Principal": "Donneur d'ordre",
    "Id": "Identifiant",
    # search
    "any": "tous",
    "From": "Du",
    "To (inclusive)": "Au (inclus)",
    "Degraded only": "Dégradées seulement",
    "Clear": "Effacer",
    "Dates and hours in": "Dates et heures en",
    "Numbers are masked in lists: open a decision to see its number.": (
        "Les numéros sont masqués dans les listes : ouvrez une décision pour voir son numéro."
    ),
    "Sort": "Trier",
    "Paris time": "Heure de Paris",
    "Callee's local time": "Heure locale de l'appelé",
    "degraded": "dégradée",
    "Nothing found": "Aucun résultat",
    "First page": "Première page",
    "Next page": "Page suivante",
    # decision
    "Decision": "Décision",
    "Record": "Enregistrement",
    "This number's history": "Historique de ce numéro",
    "Rules": "Règles",
    "Every rule evaluated, in order; the first that settles the call decides.": (
        "Chaque règle évaluée, dans l'ordre ; la première qui tranche décide."
    ),
    "Rule": "Règle",
    "Outcome": "Issue",
    "Detail": "Détail",
    "Evidence": "Preuves",
    "Policy": "Politique",
    "Name": "Nom",
    "Version": "Version",
    "Hash": "Empreinte",
    "The call": "L'appel",
    "Hash chain": "Chaîne de hachage",
    "Paris time (decision)": "Heure de Paris (décision)",
    "Number as dialled": "Numéro tel que composé",
    "Purpose": "Finalité",
    "Sector": "Secteur",
    "Attempts in the window": "Tentatives sur la période",
    "Shadow mode: answered": "Mode observation : répondu",
    "Degraded: decided by the fail mode": "Dégradée : décidée par le mode de repli",
    "Latency": "Latence",
    "Channel": "Canal",
    "Unique id": "Identifiant unique",
    "Caller ID": "Numéro présenté",
    "Adapter": "Adaptateur",
    # history
    "Every decision, outcome and list change that touched this number, in time order, on"
    " every node; then what the lists in force in Redis hold for it now.": (
        "Chaque décision, issue d'appel et changement de liste concernant ce numéro, dans"
        " l'ordre, sur tous les nœuds ; puis ce que les listes en vigueur dans Redis"
        " contiennent pour lui maintenant."
    ),
    "Event": "Événement",
    "Campaign / principal": "Campagne / donneur d'ordre",
    "Who": "Qui",
    "Nothing in the central store for this number": "Rien dans le stockage central pour ce numéro",
    "Only the newest events are shown": "Seuls les événements les plus récents sont affichés",
    "In force now": "En vigueur maintenant",
    "The lists in force are not shown": "Les listes en vigueur ne sont pas affichées",
    "On no list": "Sur aucune liste",
    # lists
    "The lists cannot be read": "Les listes ne peuvent pas être lues",
    "List": "Liste",
    "Entries": "Entrées",
    "Bytes per entry": "Octets par entrée",
    "Last import": "Dernier import",
    "Source": "Source",
    "Age (days)": "Âge (jours)",
    "Registry check": "Consultation du registre",
    "Freshness": "Fraîcheur",
    "registry-checked numbers go stale within": (
        "numéros vérifiés auprès du registre deviennent périmés d'ici"
    ),
    "days": "jours",
    "A registry result set stops counting its clear numbers 30 days after its check (they"
    " are then denied OPTOUT_UNVERIFIED); a listing denies whatever its age.": (
        "Un résultat du registre cesse de valoir pour ses numéros non inscrits 30 jours après"
        " la consultation (ils sont alors refusés OPTOUT_UNVERIFIED) ; une inscription refuse"
        " quel que soit son âge."
    ),
    # exports
    "The same files as dialguard audit export: JSON Lines (the journal's lines, their"
    " hashes check) or CSV, and a manifest. Each export is recorded in the audit journal:"
    " who, when, what.": (
        "Les mêmes fichiers que dialguard audit export : JSON Lines (les lignes du journal,"
        " leurs empreintes se vérifient) ou CSV, et un manifeste. Chaque export est inscrit"
        " au journal d'audit : qui, quand, quoi."
    ),
    "Format": "Format",
    "Mask numbers": "Masquer les numéros",
    "no key configured": "aucune clé configurée",
    "Export": "Exporter",
    "Created": "Créé",
    "By": "Par",
    "Range": "Période",
    "Filters": "Filtres",
    "Files": "Fichiers",
    "masked": "masqué",
    "manifest": "manifeste",
    "No export kept": "Aucun export conservé",
    "Exports are removed after": "Les exports sont supprimés après",
    # errors
    "Back to Today": "Retour à Aujourd'hui",
    "Not found": "Introuvable",
    "Forbidden": "Interdit",
    "Unavailable": "Indisponible",
    "Bad request": "Requête incorrecte",
    "Internal error": "Erreur interne",
    "No such record in the central store.": "Aucun enregistrement de cet identifiant.",
    "Exports and whole numbers in lists are for the compliance role.": (
        "Les exports et les numéros complets dans les listes sont réservés au rôle conformité."
    ),
    "This form has expired or did not come from the console (CSRF check): reload the page"
    " and send it again.": (
        "Ce formulaire a expiré ou ne vient pas de la console (contrôle CSRF) : rechargez la"
        " page et envoyez-le à nouveau."
    ),
    "An unexpected error; it is logged.": "Une erreur inattendue ; elle est journalisée.",
    "Masked exports need a key (mask_key_file or DIALGUARD_AUDIT_MASK_KEY).": (
        "Les exports masqués demandent une clé (mask_key_file ou DIALGUARD_AUDIT_MASK_KEY)."
    ),
    "The export is not made: its audit record cannot be written": (
        "L'export n'est pas fait : son enregistrement d'audit ne peut pas être écrit"
    ),
}
