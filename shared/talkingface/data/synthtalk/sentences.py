"""Phonetically varied sentences for SynthTalk speech, per language, deterministic by seed.

Each language has a word list written for this project (~90-100 common words: nouns, verbs,
adjectives; real words, no borrowed text) chosen to cover the language's vowels and
consonants, with bilabials (p, b, m) and open vowels well represented because they drive the
most visible mouth shapes. `sentence` draws a bag of distinct words, so sentences are
phonetically rich but not grammatical:

* word count uniform in [min_words, max_words];
* words drawn uniformly without replacement from the language's list;
* with probability 0.35 (only for >= 6 words) a comma after a word at a uniform position
  with at least two words either side, giving espeak a clause pause and a new intonation
  phrase;
* the ending is ".", "?" or "!" with probabilities 0.5, 0.3, 0.2 (espeak's statement,
  question and exclamation intonation); Spanish adds the opening "¿" / "¡";
* the first letter is capitalised.

`heldout_sentences` gives three fixed, grammatical sentences per language for evaluation.
They are not guaranteed disjoint from what the composer can produce word by word (some of
their words are in the lists), but being grammatical sentences they never coincide with a
composed one; hold out whole languages or voices as well when a split must be strict.
"""

from __future__ import annotations

import numpy as np

# Keys are espeak voice names (see speech.LANGUAGES).
_WORDS: dict[str, str] = {
    "en-us": """
        apple baby ball banana big black blue boat book box bread brother butter cabin
        camera car cat chair cheese children city coffee cold dog door dream early father
        fish flower friend garden girl glass good green happy heavy house jump kitchen lamp
        laugh light little machine mama market measure milk money monday moon morning mother
        mountain music night number open orange paper park party pencil people pepper
        picture pizza play purple rabbit red river road room school sheep ship shoe sister
        small smile snow song street summer table television thank thought tiger today
        together train tree under video village voice water weather window winter yellow
        zebra zoo
    """,
    "de": """
        Abend Apfel Arbeit Auto Baum Berg Bett Bild Blume Boot Brot Brücke Buch Butter Dach
        Dorf essen Fenster Feuer Fisch Flasche fragen Frau Freund früh Garten geben Glas
        groß grün gut Haus heute Himmel hoch Hund immer Jahr jung Kaffee kalt Katze Kind
        Kirche klein Küche lachen lang laufen Licht Löffel Luft machen Mädchen Mama Mann
        Mauer Milch Mittag Montag Morgen müde Mutter Nacht neu Ohr Papa Papier Pferd
        Pflanze Platz Regen rot Sache schön Schule schwarz Sonne Spiel Stadt Straße Stuhl
        Tag Tisch Tür Uhr Vater Vogel Wasser Weg weiß Wetter Wind Woche Zeit Zimmer Zug
    """,
    "fr": """
        ami arbre argent balle bateau beau bébé beurre blanc bleu boire bois bonjour bouche
        bras café chambre chanter chapeau chat chaud chemin cheval chien ciel cœur couleur
        court demain dormir eau école enfant été fenêtre femme feu fille fleur fromage frère
        garçon gâteau genou grand gris heure hiver homme jambe jardin jaune jeu jour lait
        lune madame main maison maman manger mer midi mère montagne monde mouton neige noir
        nuit oiseau orange pain papa papier parler petit peur pied pluie poisson pomme porte
        rouge rue soleil table temps terre train vache vert ville voiture
    """,
    "es": """
        abuelo agua amigo amor árbol azul bailar barco beber boca bonito bueno caballo
        cabeza café calle cama camino campo casa cerca cielo ciudad coche comer corazón
        correr cuchara dedo dinero domingo dormir escuela estrella familia fiesta flor fuego
        gato gente grande guitarra hablar hermano hijo hombre hoy huevo invierno jardín
        joven jugar leche libro llamar lluvia luna madre mañana mano mar mesa mujer mundo
        música naranja niño noche nube ojo padre pájaro pan papá pelota perro pequeño playa
        pueblo puerta queso rojo ropa semana silla sol tarde tiempo tierra verde viento
        zapato
    """,
    "it": """
        acqua albero amico amore anno bambino barca bello bene bianco bocca borsa buono
        caffè cane casa cavallo cena chiesa cielo città cuore cucina domani donna fame
        famiglia festa figlio fiore fratello freddo fuoco gatto gelato giallo giardino
        giorno gnocchi grande guerra latte letto libro luna madre mamma mangiare mano mare
        mattina mela mese mondo montagna notte nuovo occhio oggi orologio pane papà parola
        pasta pesce piazza piccolo pioggia poco ponte porta quaderno ragazzo rosso sabato
        scuola sedia sera sole strada tavolo tempo terra treno uomo uovo vento verde vino
        zucchero
    """,
    "pt-br": """
        abacaxi água amigo amor árvore azul banana barco beber boca bola bom cabeça cachorro
        café cama caminho campo casa céu chave chuva cidade coisa comer coração criança dia
        dinheiro domingo escola estrela família feliz filho flor fogo gato gente grande hoje
        homem irmão janela jardim jogo lápis leite livro lua mãe manhã mão mar menino mesa
        mulher mundo música noite nuvem olho ovo pai pão papel pássaro peixe pequeno porta
        praia queijo rio roupa sapato semana sol tarde tempo terra trabalho verde vento
        vermelho vida bebê pipoca borboleta maçã bicicleta
    """,
    "nl": """
        aap appel arm avond baby bad bal bed beer berg bloem blauw boek boom boot brood broer
        buiten dag deur dochter dorp druk eten fiets geel geld goed groot gras haar hand hart
        hemel hond huis jaar jongen kaas kat kerk kind klein koffie koud kop lachen lamp lang
        licht lucht maan maandag melk meisje mensen moeder morgen muziek nacht nieuw oog oma
        opa paard papier pen plein regen rood school schip slapen spelen stad straat stoel
        tafel tijd trein tuin uur vader vis vogel vrouw water week weg wit zee zon zomer
        zwart
    """,
    "pl": """
        babcia biały brat chleb chłopiec ciepło córka czarny czas czerwony dom drzewo dziecko
        dzień dziękuję góra herbata jabłko jajko jezioro kawa kobieta koń kot kwiat las lato
        lekarz łóżko mama masło matka miasto mięso mleko morze most muzyka noc nos obiad oko
        okno ojciec pan papier pies piwo plaża pociąg pogoda pole pomidor praca ptak rano
        ręka rower ryba rzeka samochód ser siostra słońce sok stół szkoła szybko śnieg tata
        teraz ulica woda wiatr wieczór wino zamek zielony zima zupa żaba życie piłka mapa
        lampa obraz pomarańcza wiosna
    """,
    "sv": """
        arbete bok barn bil blomma blå bord bröd bror båt dag dörr eld fisk fönster gata
        glad god gul gå hav hem himmel hund hus hår is jobb jord kaffe katt kvinna kyrka kök
        lampa land liv lång lärare mamma man mat mjölk morgon mun människa natt ny ord
        papper pappa penna pojke regn röd sjö skog sko skola sol sommar stad stol stor
        stjärna sång tack tid tjej tåg vatten vecka vinter väg vän år äpple öga öl bagare
        bära ficka boll by bad mus flicka fågel snö hjärta ljus
    """,
    "cs": """
        auto babička bílý bota bratr brambora chleba dcera den děkuji dítě dobrý dole domov
        dům dveře hlava hora hrad hudba jablko jaro jídlo kámen kočka kolo kniha krásný les
        letadlo léto maminka malý máma maso matka město měsíc mléko moře most noc nový oběd
        oko okno otec pes pivo pole polévka práce pták rok ruka ryba řeka sestra slunce sníh
        stůl strom škola šťastný tatínek teplo ticho táta ulice večer velký voda vítr vlak
        zahrada zámek zelený zima žena život pero mýdlo pomeranč papír mapa lampa obraz
        hřiště
    """,
    "id": """
        air anak angin api apel ayah baju bapak baru bawah besar biru buah buku bulan bunga
        burung cahaya cantik cepat cinta dapur daun desa dingin dua emas gajah gambar garam
        gelas gunung hari hati hijau hitam hujan ibu ikan jalan jam jendela jeruk kaki kamar
        kampung kecil kemarin kopi kota kucing kuda lampu langit laut lima makan malam mama
        mandi mata matahari meja merah minum mobil nasi nyanyi orang pagi pantai pasar pergi
        pintu pohon putih rumah sapi sawah sekolah senang siang sungai susu tahun tanah
        telur teman tidur topi udara uang ular warna
    """,
    "tr": """
        ağaç akşam anne araba arkadaş ayakkabı baba balık bahçe bardak beyaz bulut cami çay
        çiçek çocuk dağ deniz ders dünya ekmek el elma ev gece gemi gök göz gün güneş hava
        hayat iyi kalem kapı kar kardeş kedi kırmızı kitap köpek köy kuş mavi masa mektup
        meyve mutfak okul oda orman para pazar peynir pencere renk sabah sandalye sarı saat
        sevgi siyah soğuk su şehir şeker tavuk tatlı tren uçak uzun yağmur yaz yeni yeşil
        yol yıl yumurta zaman bebek balon bal pamuk pilav patates mum boya bahar müzik
        öğretmen
    """,
}

_HELDOUT: dict[str, tuple[str, ...]] = {
    "en-us": (
        "My brother bought a big map of the old harbour.",
        "Please open the window before the meeting begins.",
        "Where did you put the blue umbrella yesterday?",
    ),
    "de": (
        "Mein Bruder kauft morgen ein neues Fahrrad.",
        "Bitte mach das Fenster auf, es ist sehr warm.",
        "Wo hast du die blaue Tasche gelassen?",
    ),
    "fr": (
        "Mon père prépare un bon repas pour toute la famille.",
        "Peux-tu ouvrir la fenêtre, s'il te plaît ?",
        "Nous partons à la plage demain matin.",
    ),
    "es": (
        "Mi hermano compra pan fresco cada mañana.",
        "¿Puedes abrir la ventana, por favor?",
        "Mañana vamos a la playa con mis primos.",
    ),
    "it": (
        "Mio padre prepara la pasta ogni domenica.",
        "Puoi aprire la finestra, per favore?",
        "Domani andiamo al mare con gli amici.",
    ),
    "pt-br": (
        "Meu pai prepara o café todas as manhãs.",
        "Você pode abrir a janela, por favor?",
        "Amanhã vamos à praia com os nossos amigos.",
    ),
    "nl": (
        "Mijn broer koopt morgen een nieuwe fiets.",
        "Kun je het raam even openmaken?",
        "Wij gaan zaterdag met de boot naar het eiland.",
    ),
    "pl": (
        "Mój brat kupuje jutro nowy rower.",
        "Czy możesz otworzyć okno?",
        "W sobotę pojedziemy nad morze z przyjaciółmi.",
    ),
    "sv": (
        "Min bror köper en ny cykel i morgon.",
        "Kan du öppna fönstret, tack?",
        "På lördag åker vi båt till ön.",
    ),
    "cs": (
        "Můj bratr zítra koupí nové kolo.",
        "Můžeš prosím otevřít okno?",
        "V sobotu pojedeme k moři s přáteli.",
    ),
    "id": (
        "Adik saya membeli sepeda baru besok pagi.",
        "Bisakah kamu membuka jendela itu?",
        "Hari Sabtu kami pergi ke pantai bersama teman.",
    ),
    "tr": (
        "Kardeşim yarın yeni bir bisiklet alacak.",
        "Pencereyi açabilir misin lütfen?",
        "Cumartesi günü arkadaşlarla denize gidiyoruz.",
    ),
}

# Deduplicated, in first-appearance order so the index a seed draws is stable.
WORDS: dict[str, tuple[str, ...]] = {
    lang: tuple(dict.fromkeys(text.split())) for lang, text in _WORDS.items()
}
SENTENCE_LANGUAGES: tuple[str, ...] = tuple(WORDS)

_ENDINGS = (".", "?", "!")
_ENDING_P = (0.5, 0.3, 0.2)
_COMMA_P = 0.35


def _words(language: str) -> tuple[str, ...]:
    try:
        return WORDS[language]
    except KeyError:
        raise ValueError(
            f"no word list for language {language!r}; have {', '.join(SENTENCE_LANGUAGES)}"
        ) from None


def sentence(
    rng: np.random.Generator, language: str, min_words: int = 4, max_words: int = 11
) -> str:
    """A random sentence of distinct words from `language`'s list (see the module docstring)."""
    words = _words(language)
    if not 1 <= min_words <= max_words <= len(words):
        raise ValueError(f"need 1 <= min_words <= max_words <= {len(words)}")
    n = int(rng.integers(min_words, max_words + 1))
    picked = [words[i] for i in rng.choice(len(words), size=n, replace=False)]
    ending = _ENDINGS[int(rng.choice(len(_ENDINGS), p=_ENDING_P))]
    # Drawn even when unused so the number of draws does not depend on the outcome.
    comma_roll, comma_at = rng.random(), int(rng.integers(2, max(3, n - 1)))
    if n >= 6 and comma_roll < _COMMA_P:
        picked[comma_at - 1] += ","
    text = " ".join(picked)
    text = text[0].upper() + text[1:] + ending
    if language == "es" and ending in "?!":
        text = ("¿" if ending == "?" else "¡") + text
    return text


def heldout_sentences(language: str) -> tuple[str, ...]:
    """Fixed grammatical sentences for evaluation (see the module docstring on disjointness)."""
    _words(language)
    return _HELDOUT[language]
